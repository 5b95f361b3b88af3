"""Lightning's TensorBoard logger as a sweep needs it (configs/logger/tensorboard.yaml): each
job's run named by the overrides that vary, those hparams first in the HParams tab, the losses
first among the cards and Lightning's counters last."""

import time
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from cvae_exp.summary import run_name, sweep_overrides, tensorboard_hparams

# TensorBoard orders its cards by tag, so groups are named for the order a user reads them in:
# the objective's loss of each stage as loss/train, loss/val, loss/test (one card group, first),
# then the image grids (samples/, cvae_exp/callbacks.py), test/, train/ and val/, and last
# Lightning's epoch counter and the learning-rate monitor's lr-<optimizer>.
LOSS_GROUP = "loss"
TRAINER_GROUP = "z_trainer"
STAGES = ("train", "val", "test")
# The HParams tab shows the first five metrics by default: the grade and the losses first
MAIN_METRICS = ("test/score", f"{LOSS_GROUP}/test", "test/ssim", "test/mse", "test/fid")


def tensorboard_tag(key: str) -> str:
    """The tag a logged metric is shown under in TensorBoard (metrics.json keeps its key)."""
    if key == "epoch" or key.startswith("lr-"):
        return f"{TRAINER_GROUP}/{key}"
    stage, _, name = key.partition("/")
    return f"{LOSS_GROUP}/{stage}" if name == "loss" and stage in STAGES else key


def _kind(value: bool | int | float | str) -> tuple[str, str]:
    """A hparam's data type in the HParams plugin, and its field in a protobuf Value."""
    if isinstance(value, bool):
        return "DATA_TYPE_BOOL", "bool_value"
    return ("DATA_TYPE_STRING", "string_value") if isinstance(value, str) else ("DATA_TYPE_FLOAT64", "number_value")


def hparams_records(hparams: dict[str, Any], differs: set[str], metrics: list[str]) -> list:
    """The HParams plugin's experiment, session start and session end summaries, as Lightning's
    log_hyperparams writes them but with the varied hparams marked `differs`: the HParams tab
    shows those first (and five in all by default), the main test metrics first. Built from the
    plugin's protos: summary_v2.hparams_config_pb cannot mark `differs`, and its hparams_pb names
    a session group, which would merge equal runs of different sweeps into one row."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    def record(tag: str, **data) -> Summary:
        content = metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(**data))
        return Summary(value=[Summary.Value(tag=tag, metadata=content, tensor=metadata.NULL_TENSOR)])

    infos = [
        api_pb2.HParamInfo(name=name, type=_kind(value)[0], differs=name in differs) for name, value in hparams.items()
    ]
    tags = sorted(
        map(tensorboard_tag, metrics),
        key=lambda tag: MAIN_METRICS.index(tag) if tag in MAIN_METRICS else len(MAIN_METRICS),
    )
    experiment = api_pb2.Experiment(
        hparam_infos=infos,
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in tags],
        time_created_secs=time.time(),
    )
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for name, value in hparams.items():
        setattr(start.hparams[name], _kind(value)[1], value)
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    return [
        record(metadata.EXPERIMENT_TAG, experiment=experiment),
        record(metadata.SESSION_START_INFO_TAG, session_start_info=start),
        record(metadata.SESSION_END_INFO_TAG, session_end_info=end),
    ]


class SweepTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoardLogger for sweeps: a job logs to tensorboard/<run_name>/ (with
    `version` None; a single run to tensorboard/), its HParams records mark the hparams that
    the sweep varies, and metrics are shown under their tensorboard_tag."""

    def __init__(self, save_dir: str, version: str | None = None, **kwargs: Any) -> None:
        self.sweep_overrides = sweep_overrides(Path(save_dir))
        super().__init__(save_dir, version=run_name(self.sweep_overrides) if version is None else version, **kwargs)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        super().log_metrics({tensorboard_tag(key): value for key, value in metrics.items()}, step)

    @rank_zero_only
    def log_hyperparams(self, params: Any, metrics: dict[str, Any] | None = None, step: int | None = None) -> None:
        """With `metrics` (the final test metrics, cvae_exp/run.py): hparams.yaml, and the
        HParams records of `params` (run_summary) beside those metrics, whose values the test
        stage has logged already. Without: Lightning's (the config at fit start)."""
        super().log_hyperparams(params, step=step)
        if not metrics:
            return
        hparams, differs = tensorboard_hparams(params, self.sweep_overrides)
        writer = self.experiment._get_file_writer()  # as Lightning writes them: no public API takes a Summary
        for record in hparams_records(hparams, differs, list(metrics)):
            writer.add_summary(record, step)
