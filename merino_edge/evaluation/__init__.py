"""Zero-shot evaluation of bundles (lm-evaluation-harness tasks on local files or the hub)."""
