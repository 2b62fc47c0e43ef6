"""What a run writes: the output folder, checkpoints, save formats, compaction, remote-code files,
the report, the summary and the sparsity map."""
