"""``python -m hornbeam_trio module:app [flags]``: the same as the ``hornbeam-trio`` command."""

from hornbeam_trio.cli import main

if __name__ == "__main__":  # a reload child is spawned with this module as __mp_main__
    raise SystemExit(main())
