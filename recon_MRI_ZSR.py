"""MRI z-axis super-resolution with a 2D diffusion prior on planes that contain z and ISCS noise.

Averages groups of thin slices of a volume into thick ones, recovers the thin slices, and writes a
self-describing results folder; ``python recon_MRI_ZSR.py --help`` lists every option.
``recon_ZSR.sh`` is an editable template.
"""

import sys

try:
    from recon.problems import ZSR_PROFILE
    from recon.run import main as run_main
except KeyboardInterrupt:
    # Ctrl-C while torch loads ends the script quietly, with the exit code of a Ctrl-C during a run.
    if __name__ != "__main__":
        raise
    sys.exit(130)


def main(argv=None) -> int:
    """Run with ``argv`` (default: the command line); returns the exit code."""
    return run_main(ZSR_PROFILE, argv)


if __name__ == "__main__":
    sys.exit(main())
