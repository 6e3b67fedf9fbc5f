"""edgedistill: distill a trained image classifier into a small deployable model without its training data.

Architecture (README.md): inputs -> stages -> backends -> results, driven by pipeline.py, with cli.py on top.
"""

from .version import __version__


def compress(recipe, run_dir=None, fresh=False, stages=None, console=None):
    """Runs the recipe's stages and returns the report; see `edgedistill.pipeline.compress`."""
    from .pipeline import STAGES
    from .pipeline import compress as _compress

    return _compress(recipe, run_dir=run_dir, fresh=fresh, stages=tuple(stages or STAGES), console=console)


__all__ = ["compress", "__version__"]
