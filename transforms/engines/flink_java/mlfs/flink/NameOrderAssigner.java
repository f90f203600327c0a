package mlfs.flink;

import java.util.ArrayList;
import java.util.Collection;
import java.util.Comparator;
import java.util.List;
import java.util.Optional;
import java.util.PriorityQueue;
import org.apache.flink.connector.file.src.FileSourceSplit;
import org.apache.flink.connector.file.src.assigners.FileSplitAssigner;

/**
 * Hands a file source's splits out in path order (then offset), whatever order the directory
 * listing gave them in: a file source is one partition read in file-name order (DESIGN §2), so
 * lateness is decided against the same arrival order as the reference's. The reader asks for its
 * next split only once it finished the last, so each file is read whole before the next.
 */
public class NameOrderAssigner implements FileSplitAssigner {
    static final Comparator<FileSourceSplit> ORDER =
            Comparator.comparing((FileSourceSplit s) -> s.path().toString())
                    .thenComparingLong(FileSourceSplit::offset);

    private final PriorityQueue<FileSourceSplit> pending = new PriorityQueue<>(ORDER);

    public NameOrderAssigner(Collection<FileSourceSplit> splits) {
        pending.addAll(splits);
    }

    @Override
    public Optional<FileSourceSplit> getNext(String hostname) {
        return Optional.ofNullable(pending.poll());
    }

    @Override
    public void addSplits(Collection<FileSourceSplit> splits) {
        pending.addAll(splits);
    }

    @Override
    public Collection<FileSourceSplit> remainingSplits() {
        List<FileSourceSplit> left = new ArrayList<>(pending);
        left.sort(ORDER);
        return left;
    }

    /** What a ``FileSource`` builder's ``setSplitAssigner`` takes. */
    public static FileSplitAssigner.Provider provider() {
        return new Provider();
    }

    static class Provider implements FileSplitAssigner.Provider {
        private static final long serialVersionUID = 1L;

        @Override
        public FileSplitAssigner create(Collection<FileSourceSplit> initialSplits) {
            return new NameOrderAssigner(initialSplits);
        }
    }
}
