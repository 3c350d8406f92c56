"""Every option of every config group composes, alone and in the combinations the README documents, and what it
selects is valid: model specs and timm architectures, dataset sources and split files, scores and their options,
preprocessing transforms, fine-tuning presets, tracking stores, launchers and sweepers, the experiment.

The layering traps are here too: an explicit choice (preprocess=..., preprocess.input_size=...) must win over
what a preset sets, and every command shares one Hydra block.
"""

from __future__ import annotations

import functools
import importlib
import re
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import MissingConfigException
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from omegaconf import OmegaConf

from medxfer.config import config_dir

CONF = Path(config_dir())
PRIMARY = ("score", "finetune", "analyze", "rank", "study", "data", "model_zoo")
GROUPS = ("model", "dataset", "score", "finetune", "preprocess", "tracking", "paths", "zoo", "experiment")
# a timm-style data config, standing in for a built model's
TIMM_DATA = {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bicubic",
             "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def groups_of(primary: str) -> list[str]:
    """The config groups the primary config's defaults list selects (``optional`` ones included)."""
    defaults = yaml.safe_load((CONF / f"{primary}.yaml").read_text()).get("defaults", [])
    found = []
    for entry in defaults:
        if isinstance(entry, dict):
            key = next(iter(entry)).replace("optional ", "").replace("override ", "")
            if key in GROUPS:
                found.append(key)
    return found


CASES = [(p, g, o) for p in PRIMARY for g in groups_of(p) for o in options(g)]


@pytest.fixture(scope="module")
def cfg_of(tmp_path_factory):
    """compose(config_name, overrides) under one Hydra initialisation; MEDXFER_ROOT is a temporary folder."""
    root = tmp_path_factory.mktemp("root")
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDXFER_ROOT", str(root))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield lambda name, overrides=(), hydra=False: compose(name, list(overrides), return_hydra_config=hydra)
    mp.undo()


def _container(cfg, key=None):
    node = cfg if key is None else cfg[key]
    return OmegaConf.to_container(node, resolve=True, throw_on_missing=False)


# --- what each group selects, checked the way the stages use it -----------------------------------------------

def check_model(node: dict) -> None:
    from medxfer.models.zoo import ModelSpec, check_arch

    spec = ModelSpec.from_config(node)
    check_arch(spec.arch)
    assert spec.name  # from_config raised already on a head it cannot read


def check_dataset(node: dict) -> None:
    from medxfer.data.readers import source_from_config
    from medxfer.data.splits import SPLIT_FILE_KEYS, split_file, split_source

    from medxfer.data.readers import path_source

    if node.get("source") == "path" and node.get("path") in (None, "???"):
        node = {**node, "path": "/data/mine/labels.csv"}  # ??? until the user says where
    spec = source_from_config(path_source(node))
    assert spec.source in ("csv", "folder", "medmnist", "synthetic")
    split = dict(node.get("split") or {})
    if split_source(split, node["name"]) == "files":
        for key in SPLIT_FILE_KEYS + (("ood",) if split.get("ood") else ()):
            if not str(split.get("root", "")).startswith(str(node["root"])):  # shipped files, not the user's
                assert split_file(split, key, node["name"]).is_file()
    if node.get("ood"):
        ood = {**node["ood"], "name": node["ood"].get("name", "ood")}
        assert source_from_config(ood).source in ("csv", "folder", "medmnist", "synthetic")


def check_score(node: dict, model: dict) -> None:
    from medxfer.scores.options import score_names, score_options

    names = score_names(node.get("names"))
    score_options(node.get("options"), model, names)
    assert node["device"] in ("cpu", "cuda") and isinstance(node["deterministic"], bool)


def check_preprocess(node: dict) -> None:
    from medxfer.data.transforms import eval_transform, resolve_preprocess, train_transform

    p = resolve_preprocess(TIMM_DATA, node)
    eval_transform(p), train_transform(p)
    assert p.resize >= p.input_size > 0


def check_finetune(c: dict) -> None:
    from medxfer.stages.finetune import check_finetune_config
    from medxfer.training.halton import halton_trial

    check_finetune_config(c["finetune"])
    (lr_lo, lr_hi), (wd_lo, wd_hi) = c["finetune"]["lr_bounds"], c["finetune"]["wd_bounds"]
    lr, wd = halton_trial(c["trial"], [lr_lo, lr_hi], [wd_lo, wd_hi])
    assert lr_lo <= lr <= lr_hi and wd_lo <= wd <= wd_hi and c["finetune"]["preset"] in ("smoke", "paper")


def check_tracking(node: dict, study: str, stage: str) -> None:
    assert node["uri"].split(":", 1)[0] in ("sqlite", "http", "https", "postgresql")
    assert node["experiment"] == f"{study}/{stage}"


def check_study(c: dict) -> None:
    assert set(c["models"]) <= set(options("model")) and set(c["datasets"]) <= set(options("dataset"))
    assert all(isinstance(t, int) and t >= 0 for t in c["finetune"]["trials"])


@functools.lru_cache(maxsize=None)
def _rank_models(names: tuple[str, ...]) -> dict:
    from medxfer.cli.rank import model_configs

    return model_configs(list(names))  # composes each model config: once per list, not once per case


def check(primary: str, cfg) -> None:
    """Everything the composed ``primary`` config selects, as its stage would read it."""
    c = _container(cfg)
    if "model" in c and c["model"] is not None:
        check_model(c["model"])
    if "dataset" in c:
        check_dataset(c["dataset"])
    if primary == "score":
        check_score(c["score"], c["model"])
    if primary == "rank":
        from medxfer.scores.options import score_options
        from medxfer.stages.rank import requested_ranker

        grid = yaml.safe_load((CONF / "grid" / "default.yaml").read_text())  # models: null = the study's
        models = _rank_models(tuple(c["models"] or grid["models"]))
        _, scores = requested_ranker(c["score"])
        for model in models.values():
            score_options(c["score"]["options"], model, scores)
    if "preprocess" in c:
        check_preprocess(c["preprocess"])
    if primary == "finetune":
        check_finetune(c)
    if primary == "analyze":
        from medxfer.analysis.ensembles import parse_ensembles

        parse_ensembles(c["ensembles"])
    if primary == "study":
        check_study(c)
    if "tracking" in c:
        check_tracking(c["tracking"], c["study"], c["stage"])


# --- every option alone -----------------------------------------------------------------------------------------

def test_every_group_option_is_used_by_some_command():
    assert {g for _, g, _ in CASES} == set(GROUPS)


@pytest.mark.parametrize("primary", PRIMARY)
def test_each_command_composes_with_its_defaults(cfg_of, primary):
    check(primary, cfg_of(primary))


@pytest.mark.parametrize(("primary", "group", "option"), CASES, ids=[f"{p}-{g}={o}" for p, g, o in CASES])
def test_every_option_alone(cfg_of, primary, group, option):
    overrides = [f"{group}={option}"]
    if group == "dataset" and option in ("csv", "folder", "files"):
        overrides.append("dataset.root=/data/mine")  # ??? until the user says where
    cfg = cfg_of(primary, overrides)
    check(primary, cfg)
    c = _container(cfg)
    if group == "preprocess" and primary in ("score", "finetune", "rank"):
        # the chosen option is what the stage gets, whatever preset comes with it
        chosen = yaml.safe_load((CONF / "preprocess" / f"{option}.yaml").read_text())
        assert c["preprocess"] == chosen
    if group == "finetune":
        preset = yaml.safe_load((CONF / "finetune" / f"{option}.yaml").read_text())["finetune"]
        assert {k: c["finetune"][k] for k in preset} == preset


# --- the layering trap: a preset never overrides an explicit choice -------------------------------------------

@pytest.mark.parametrize("preset", options("finetune"))
@pytest.mark.parametrize("choice", options("preprocess"))
def test_explicit_preprocess_wins_over_the_finetune_preset(cfg_of, preset, choice):
    c = _container(cfg_of("finetune", [f"finetune={preset}", f"preprocess={choice}"]))
    assert c["preprocess"] == yaml.safe_load((CONF / "preprocess" / f"{choice}.yaml").read_text())
    assert c["finetune"]["preset"] == preset


def test_presets_choose_their_preprocessing_when_none_is_given(cfg_of):
    assert _container(cfg_of("finetune"))["preprocess"]["input_size"] == 64           # smoke (the default)
    paper = _container(cfg_of("finetune", ["finetune=paper"]))["preprocess"]
    assert (paper["input_size"], paper["resize"]) == (224, 256)
    values = _container(cfg_of("finetune", ["finetune=smoke", "preprocess=paper", "preprocess.input_size=32"]))
    assert (values["preprocess"]["input_size"], values["preprocess"]["resize"]) == (32, 256)


# --- the documented combinations (README) ---------------------------------------------------------------------

DOCUMENTED = [
    ("score", ["model=efficientnet_lite0", "dataset=synthetic_derm"]),
    ("score", ["study=pilot", "tracking.uri=sqlite:////data/mlflow.db", "paths.cache_dir=/scratch/medxfer", "force=true"]),
    ("score", ["score=logme"]),
    ("score", ["score=all", "preprocess=small"]),
    ("score", ["preprocess=paper"]),
    ("score", ["dataset=csv", "dataset.root=/data/mine", "dataset.group_col=patient_id"]),
    ("score", ["dataset=folder", "dataset.root=/data/mine"]),
    ("score", ["dataset=medmnist", "dataset.medmnist.flag=dermamnist", "dataset.medmnist.size=64"]),
    ("score", ["dataset=files", "dataset.root=/data/mine", "dataset.split.ood=ood.csv",
               "dataset.ood={name: mine_ood, source: csv, root: /data/mine}"]),
    ("score", ["dataset=isic2019", "dataset.root=/data/paper", "dataset.max_samples={train: 2000}"]),
    ("score", ["tracking=server", "study=paper", "score=paper", "preprocess=paper", "extract.accelerator=gpu",
               "model=resnet50", "dataset=breakhis"]),
    ("score", ["tracking=postgres"]),
    ("finetune", ["model=efficientnet_lite0", "dataset=synthetic_derm", "trial=1", "finetune=smoke"]),
    ("finetune", ["model=efficientnet_lite0", "dataset=isic2019", "trial=74", "finetune=paper"]),
    ("finetune", ["tracking=server", "study=paper", "finetune=paper", "model=vit_small_patch16_224",
                  "dataset=brain_tumor", "trial=3"]),
    ("finetune", ["finetune=smoke", "preprocess=paper"]),
    ("analyze", ["study=pilot", "select.metric=best/val_bal_acc", "bootstrap.n=2000", "allow_incomplete=true"]),
    ("analyze", ["~ensembles.ens_linear"]),
    ("analyze", ["ensembles=null"]),
    ("analyze", ["+ensembles.mine={kind:zscore,scores:[logme,leep]}"]),
    ("analyze", ["tracking=server", "study=paper"]),
    ("study", ["study=mine", "models=[efficientnet_lite0]", "datasets=[synthetic_mri]"]),
    ("study", ["experiment=paper"]),
    ("study", ["experiment=paper", "tracking=server"]),
    ("data", ["dataset=isic2019", "dataset.root=/data/paper", "format=json"]),
    ("data", ["dataset=breakhis", "images=decode"]),
    ("data", ["dataset=brain_tumor", "dataset.split.by_group=false", "images=none"]),
]


@pytest.mark.parametrize(("primary", "overrides"), DOCUMENTED, ids=[f"{p}:{' '.join(o)}" for p, o in DOCUMENTED])
def test_documented_combinations(cfg_of, primary, overrides):
    check(primary, cfg_of(primary, overrides))


RANK = [
    ["dataset.path=/data/mine/labels.csv"],
    ["dataset.path=/data/mine"],
    ["dataset.path=/data/mine/labels.csv", "dataset.image_col=path", "dataset.label_col=finding",
     "dataset.group_col=patient", "dataset.split.val=0.2"],
    ["dataset.path=/data/mine/labels.csv", "models=[efficientnet_lite0,efficientnet_lite2]", "score=ens_rank"],
    ["dataset=synthetic_mri", "score=ens_linear", "study=default"],
    ["dataset.path=/data/mine/labels.csv", "score=imagenet_top1"],
    ["dataset.path=/data/mine/labels.csv", "score=ens_z", "score.names=[logme,leep]", "format=json"],
    ["dataset=isic2019", "preprocess=timm"],
]


@pytest.mark.parametrize("args", RANK, ids=[" ".join(a) for a in RANK])
def test_documented_rank_command_lines(cfg_of, args):
    check("rank", cfg_of("rank", args))


@pytest.mark.parametrize("launcher", ["local_parallel", "slurm", "joblib", "submitit_local", "submitit_slurm", "ray_cluster"])
@pytest.mark.parametrize("primary", ["score", "finetune"])
def test_launchers_compose_and_name_an_importable_class(cfg_of, primary, launcher):
    try:
        cfg = cfg_of(primary, [f"hydra/launcher={launcher}"], hydra=True)
        target = cfg.hydra.launcher._target_
        module, _, name = target.rpartition(".")
        assert hasattr(importlib.import_module(module), name), target
    except (MissingConfigException, ImportError) as err:  # hydra-ray-launcher is the optional extra .[ray]
        assert launcher == "ray_cluster", err
        pytest.skip(f"hydra/launcher=ray_cluster needs `pip install -e '.[ray]'`: {type(err).__name__}")


# --- one shared Hydra block -------------------------------------------------------------------------------------

@pytest.mark.parametrize("primary", ["score", "finetune", "analyze", "rank", "study", "data"])
def test_one_hydra_block_for_every_command(cfg_of, primary):
    text = (CONF / f"{primary}.yaml").read_text()
    assert "\nhydra:" not in text, f"conf/{primary}.yaml has its own hydra: block; use conf/hydra/"
    cfg = cfg_of(primary, hydra=True)
    h = cfg.hydra
    assert h.job.chdir is False
    stamp = r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d"
    outputs = re.escape(cfg.paths.output_dir)
    assert re.fullmatch(rf"{outputs}/hydra/{cfg.stage}/{stamp}", h.run.dir), h.run.dir
    assert re.fullmatch(rf"{outputs}/hydra/{cfg.stage}-multirun/{stamp}", h.sweep.dir), h.sweep.dir
    callbacks = OmegaConf.to_container(h.callbacks) or {}
    if primary in ("score", "finetune", "analyze", "rank"):  # the commands that log runs
        assert callbacks == {"prepare_tracking": {"_target_": "medxfer.tracking.callbacks.PrepareTracking"}}
    else:
        assert callbacks == {}


# --- the paper's study --------------------------------------------------------------------------------------------

PAPER_MODELS = ["resnet18", "resnet34", "resnet50", "densenet121", "densenet161", "densenet169", "efficientnet_b0",
                "mobilenetv2_050", "mobilenetv2_100", "vit_small_patch16_224"]


def test_experiment_paper_is_the_papers_grid_and_every_cell_composes(cfg_of):
    c = _container(cfg_of("study", ["experiment=paper"]))
    assert c["study"] == "paper" and c["models"] == PAPER_MODELS
    assert c["datasets"] == ["isic2019", "breakhis", "brain_tumor"]
    assert c["finetune"]["trials"] == list(range(75)) and c["finetune"]["enabled"] and c["analyze"]["enabled"]
    for m in c["models"]:
        for d in c["datasets"]:
            cell = cfg_of("score", [f"model={m}", f"dataset={d}", *c["score"]["overrides"]])
            score = _container(cell)
            assert score["score"]["names"] == ["hscore", "reg_hscore", "nce", "leep", "nleep", "logme", "gbc"]
            assert (score["preprocess"]["resize"], score["preprocess"]["input_size"]) == (256, 224)
            assert score["splits"] == ["train", "ood"] and score["dataset"]["ood"]
            check("score", cell)
    ft = _container(cfg_of("finetune", ["model=resnet18", "dataset=isic2019", *c["finetune"]["overrides"]]))
    assert (ft["finetune"]["max_epochs"], ft["finetune"]["batch_size"]) == (100, 128)
    assert (ft["preprocess"]["resize"], ft["preprocess"]["input_size"]) == (256, 224)
    assert ft["dataset"]["max_samples"] is None  # all the data, not the smoke preset's caps


def test_paper_sweeper_is_the_same_grid_as_the_experiment(cfg_of):
    c = _container(cfg_of("study", ["experiment=paper"]))
    for primary, extra, n in (("score", [], 30), ("finetune", ["trial=range(0,75)"], 2250)):
        params = _container(cfg_of(primary, ["hydra/sweeper=paper"], hydra=True).hydra.sweeper)["params"]
        assert params["model"].split(",") == c["models"] and params["dataset"].split(",") == c["datasets"]
        parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()] + extra)
        (jobs,) = BasicSweeper.split_arguments(parsed, None)
        assert len(jobs) == n


def test_study_without_experiment_is_the_default_study(cfg_of):
    c = _container(cfg_of("study"))
    assert c["study"] == "default" and len(c["models"]) >= 12 and c["models"][:3] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def test_a_study_trial_config_is_the_one_its_command_line_composes(cfg_of):
    from medxfer.workflows.grid import compose_config, finetune_overrides, trial_config

    c = OmegaConf.to_container(cfg_of("study", ["finetune.trials=[1,3]", "finetune.seeds=[0,2]"]), resolve=True)
    for trial, seed in ((1, 0), (3, 2)):
        derived = trial_config(c, "efficientnet_lite0", "synthetic_derm", trial, seed)
        composed = compose_config("finetune", finetune_overrides(c, "efficientnet_lite0", "synthetic_derm", trial, seed))
        assert OmegaConf.to_container(derived, resolve=True) == OmegaConf.to_container(composed, resolve=True)


# --- a misspelt choice ----------------------------------------------------------------------------------------------

def _chosen_groups() -> list[tuple[str, str]]:
    """(primary, group) for every config group a user chooses from on a command's line: every group of every
    primary config's defaults list (``hydra`` aside, whose choices are Hydra's own)."""
    out = []
    for primary in PRIMARY:
        for entry in yaml.safe_load((CONF / f"{primary}.yaml").read_text()).get("defaults", []):
            if isinstance(entry, dict):
                group = next(iter(entry)).replace("optional ", "").replace("override ", "")
                if group != "hydra" and (CONF / group).is_dir():
                    out.append((primary, group))
    return out


def test_every_chosen_group_is_covered():
    chosen = _chosen_groups()
    assert ("study", "experiment") in chosen and ("analyze", "experiment") in chosen and ("score", "model") in chosen
    assert {g for _, g in chosen} >= set(GROUPS) | {"grid"}


@pytest.mark.parametrize("primary,group", _chosen_groups())
def test_a_misspelt_choice_is_an_error_listing_the_known_options(cfg_of, primary, group):
    """``medxfer-study experiment=papr`` (or ``experiment=medical`` before it exists) must not run the default
    study: every group refuses an unknown option at once, naming it and listing the known ones."""
    import time

    t0 = time.perf_counter()
    with pytest.raises(MissingConfigException) as err:
        cfg_of(primary, [f"{group}=papr"])
    assert time.perf_counter() - t0 < 1.0
    message = str(err.value)
    assert f"Could not find '{group}/papr'" in message
    listed = message.split(f"Available options in '{group}':", 1)[1]
    assert all(option in listed for option in options(group)), message


def test_experiment_none_is_the_default_study(cfg_of):
    assert _container(cfg_of("study", ["experiment=none"])) == _container(cfg_of("study"))

