"""Starting from a pre-trained checkpoint: loading, resetting and freezing parts, and the
cached public pre-training recipes."""
