"""An MLflow pyfunc model over a compressed-model file (base architecture + plan + state dict).

``mlflow.pytorch`` cannot serialise every compressed model: int8 models of ``torch.ao`` carry
packed weights that neither ``torch.export`` nor pickling round-trips. The plan file always
rebuilds them (:func:`spaces.load_compressed`), so this wrapper ships that file plus the code
that reads it, and predicts logits for a float32 batch ``(N, 3, H, W)``:

    model = mlflow.pyfunc.load_model("runs:/<parent run id>/pareto-trial-7")
    logits = model.predict(images)          # numpy (N, num_classes)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CODE_PATHS = [str(ROOT / name) for name in ("rsc", "costs", "spaces", "tracking")]

# The model as code (MLflow's "models from code"): ``log_model`` is given this script, not a pickled
# object, and loading runs it (with CODE_PATHS on sys.path) instead of unpickling anything.
MODEL_CODE = """\
import mlflow.models

from tracking.compressed_model import CompressedModel

mlflow.models.set_model(CompressedModel())
"""


class CompressedModel(mlflow.pyfunc.PythonModel):
    """Rebuilds the compressed model from its artifact ``model`` on load; predicts logits."""

    def __getstate__(self) -> dict[str, Any]:
        # Where this object is pickled (a caller passing it to ``log_model`` itself rather than
        # MODEL_CODE), MLflow may have loaded the context first (input-example check); the rebuilt
        # model must not be pickled with it (int8 graph modules do not round-trip).
        return {k: v for k, v in self.__dict__.items() if k not in ("model", "plan")}

    def load_context(self, context: Any) -> None:
        from spaces.export import load_compressed

        self.model, self.plan = load_compressed(context.artifacts["model"])
        self.model.eval()

    # ``np.ndarray`` is a hint MLflow takes without validating against it (the input example's
    # tensor signature does that); without any hint MLflow warns on every log_model.
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        import torch

        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.inference_mode():
            return self.model(x).numpy()
