"""tokenizer.py -- TEMPORARY shim while two parts are written in parallel.

The parts are merged into this one file (world section first, then the codec) before the
session ends; code outside these files must only use public names through `import tokenizer`.
"""
from _world import *  # noqa: F401,F403  the miniature world (scenes, renderer, datasets)

try:
    from _codec import *  # noqa: F401,F403  encoders, S-VAE/PS-VAE, training stages
    from _codec import main  # noqa: F401
except ImportError as e:  # pragma: no cover - only while _codec.py does not exist yet
    if "_codec" not in str(e):
        raise

if __name__ == "__main__":
    main()  # noqa: F405
