"""MLflow's own conventions for what dpgov logs: the experiment kind, one experiment per
dataset, run names and descriptions that say what ran, and the data version as a logged input.

- ``mlflow.experimentKind``: MLflow 3's UI opens an experiment on its GenAI overview unless
  the experiment is tagged ``custom_model_development`` (the value its UI gives "classic ML";
  the tag and its values are read by ``mlflow/server/js``: ``GENAI_DEVELOPMENT``,
  ``CUSTOM_MODEL_DEVELOPMENT``, ...). Tagged at creation, and on first use of an older one.
- One experiment per dataset: ``train.experiment`` may hold ``{dataset}`` (the shipped
  ``dpgov-{dataset}``); a name without it is used as it is.
- ``mlflow.note.content`` is the description MLflow shows for an experiment or a run.
- The data version (DVC md5) is logged as the run's input dataset (``mlflow.log_input``
  semantics, through the client): a metadata-only dataset whose source is the DVC version.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from dpgov.contracts import TAG_BLOCKS, TAG_DATA_VERSION, TAG_DATASET, TAG_PRIVATE

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CLASSIC_ML = "custom_model_development"
NOTE_TAG = "mlflow.note.content"
DATASET_FIELD = "{dataset}"
TAG_EXPERIMENT_TEMPLATE = "dpgov.experiment_template"
DVC_SOURCE_TYPE = "dvc"
INPUT_CONTEXT = "training"


def experiment_name(template: str, dataset: str | None) -> str:
    """``template`` with ``{dataset}`` replaced by the run's dataset ("unknown" without one)."""
    return template.replace(DATASET_FIELD, dataset or "unknown")


def experiment_tags(template: str, name: str, dataset: str | None) -> dict[str, str]:
    """Tags of a new experiment: classic ML (the runs view first), its dataset, a description."""
    about = (
        f"dpgov governed runs on dataset {dataset}: DP-SGD candidates (dpgov.private = true) "
        "and their non-private references. Privacy: metrics epsilon (at delta) and delta; "
        "utility: auroc. Data versions are the runs' DVC inputs; releases go through "
        "`dpgov gate` and `dpgov promote` only."
        if dataset
        else f"dpgov runs ({name})"
    )
    tags = {EXPERIMENT_KIND_TAG: CLASSIC_ML, NOTE_TAG: about, TAG_EXPERIMENT_TEMPLATE: template}
    if dataset:
        tags[TAG_DATASET] = dataset
    return tags


def run_title(base: str, tags: dict[str, str], params: dict[str, Any]) -> str:
    """A run name that says what ran: ``<base> <dataset> [<blocks>] eps<target>``."""
    parts = [base]
    if tags.get(TAG_DATASET):
        parts.append(tags[TAG_DATASET])
    blocks = params.get("blocks")
    if isinstance(blocks, list | tuple) and blocks:
        parts.append("+".join(str(b) for b in blocks))
    if params.get("target_epsilon") is not None and tags.get(TAG_PRIVATE) == "true":
        parts.append(f"eps{params['target_epsilon']:g}")
    return " ".join(parts)


def run_description(tags: dict[str, str], params: dict[str, Any]) -> str:
    """One paragraph for the run's description (``mlflow.note.content``)."""
    private = tags.get(TAG_PRIVATE) == "true"
    model = params.get("model", "model")
    what = f"DP-SGD training of a {model}" if private else f"Non-private reference {model}"
    lines = [f"{what} on dataset {tags.get(TAG_DATASET, '?')}, blocks {tags.get(TAG_BLOCKS, '?')}"]
    if tags.get(TAG_DATA_VERSION):
        lines.append(f"data version {tags[TAG_DATA_VERSION]} (DVC)")
    if private and params.get("noise_multiplier") is not None:
        lines.append(
            f"target epsilon {params.get('target_epsilon')} at delta {params.get('delta')}, "
            f"sigma {float(params['noise_multiplier']):.4g}, sample rate "
            f"{float(params.get('sample_rate') or 0):.4g}, {params.get('steps')} steps, "
            f"accountant {params.get('accountant')}"
        )
    if not private:
        lines.append("metrics only: never registered, never released")
    return "; ".join(lines) + "."


def dvc_input(tags: dict[str, str], *, path: str | None = None) -> Any:
    """The run's input: the prepared dataset at its DVC version, as an MLflow DatasetInput
    (None when the tags name no data version)."""
    version, dataset = tags.get(TAG_DATA_VERSION), tags.get(TAG_DATASET)
    if not version or not dataset:
        return None
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    source = dvc_source_class()(version, tags.get(TAG_BLOCKS), path)
    ds = MetaDataset(source=source, name=dataset, digest=version[:36])  # type: ignore[abstract]
    return DatasetInput(
        dataset=ds._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, INPUT_CONTEXT)]
    )


@cache
def dvc_source_class() -> Any:
    """MLflow's ``DatasetSource`` for a DVC data version (its md5, ``<md5>.dir`` for a folder):
    what ``dvc pull`` or the DVC remote restores. Logged only, never loaded. Built on first use
    (mlflow is slow to import)."""
    from mlflow.data.dataset_source import DatasetSource

    class DvcDatasetSource(DatasetSource):  # type: ignore[misc]
        def __init__(self, data_version: str, blocks: str | None, path: str | None) -> None:
            self.data_version, self.blocks, self.path = data_version, blocks, path

        @staticmethod
        def _get_source_type() -> str:
            return DVC_SOURCE_TYPE

        def load(self, **_: Any) -> Any:
            raise NotImplementedError("a DVC data version: restore it with `dvc pull`")

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source: Any) -> Any:
            raise NotImplementedError

        def to_dict(self) -> dict[str, Any]:
            out: dict[str, Any] = {"data_version": self.data_version, "blocks": self.blocks}
            if self.path:
                out["path"] = self.path
            return out

        @classmethod
        def from_dict(cls, source_dict: dict[str, Any]) -> Any:
            return cls(
                source_dict["data_version"], source_dict.get("blocks"), source_dict.get("path")
            )

    return DvcDatasetSource
