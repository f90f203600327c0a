"""`mlfs` as a Python file, for spark-submit (which runs `.py` files, not console scripts):
``spark-submit ... /opt/mlfs/mlfs_spark.py backfill --engine spark --repo /repo``. The backfill
takes spark-submit's master (``backfill.spark_session``)."""

import sys

from featurestore.cli import main

if __name__ == "__main__":
    sys.exit(main())
