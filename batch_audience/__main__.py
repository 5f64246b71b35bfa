"""``python -m batch_audience``: the ``batch-audience`` command."""

from batch_audience._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
