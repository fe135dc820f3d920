"""Cone-beam CT reconstruction (limited arc or sparse views) with a 2D diffusion prior and ISCS noise.

Simulates the projections of a volume, reconstructs it, and writes a self-describing results
folder; ``python recon_CBCT.py --help`` lists every option. ``recon_CBCT.sh`` is an editable template.
"""

import sys

try:
    from recon.problems import CBCT_PROFILE
    from recon.run import main as run_main
except KeyboardInterrupt:
    # Ctrl-C while torch loads ends the script quietly, with the exit code of a Ctrl-C during a run.
    if __name__ != "__main__":
        raise
    sys.exit(130)


def main(argv=None) -> int:
    """Run with ``argv`` (default: the command line); returns the exit code."""
    return run_main(CBCT_PROFILE, argv)


if __name__ == "__main__":
    sys.exit(main())
