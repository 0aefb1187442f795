"""Where the flow-matching miniature's stages read and write.

The Debian packages are shared with the miniature (``training/data``); the crop cache, the
tokenizer, checkpoints and logs are this recipe's own, and the model goes to ``weights/mini-flow``.
"""

from dataclasses import dataclass
from pathlib import Path

from training.mini import paths as mini_paths

REPO = mini_paths.REPO


@dataclass(frozen=True)
class Folders(mini_paths.Folders):
    """The miniature's folders (``vae_run``, ``latents``, ``tokenizer``, ...), this recipe's.

    Adds where the unpacked packages are (``sources``) and the transformer's run.
    """

    data: Path = REPO / "training" / "data" / "mini_flow"  # crops without the giant files
    runs: Path = REPO / "training" / "runs" / "mini_flow"
    shipped: Path = REPO / "src" / "mimicshield" / "weights" / "mini-flow"
    sources: Path = mini_paths.DEFAULT.data  # the miniature's debs/ and extract/

    @property
    def source_folders(self) -> mini_paths.Folders:
        """Folders whose ``debs`` and ``extract`` are the shared unpacked packages."""
        return mini_paths.Folders(data=self.sources)

    @property
    def transformer_run(self) -> Path:
        """The transformer and text encoders training run: its ``last.pt`` checkpoint."""
        return self.runs / "transformer"


DEFAULT = Folders()
