"""A typo fails before the heavy libraries load; the hub is given up on at once when it cannot be reached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
HEAVY = ("torch", "lightning", "mlflow", "timm", "sklearn", "pandas")

# runs an entry point in-process, then reports which heavy modules it had imported when it exited
_PROBE = """
import json, sys
sys.argv = [{prog!r}, *{args!r}]
from importlib import import_module
main = import_module({module!r}).main
code = 0
try:
    main()
except SystemExit as e:
    code = e.code
print("PROBE" + json.dumps({{"code": code, "heavy": sorted(m for m in {heavy!r} if m in sys.modules)}}))
"""


def _probe(module: str, args: list[str], tmp_path: Path) -> tuple[dict, str]:
    env = {**os.environ, "MEDXFER_ROOT": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(prog=module, args=args, module=module, heavy=HEAVY)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE")]
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(line[-1][len("PROBE"):]), proc.stdout + proc.stderr


def test_model_typo_fails_with_the_list_of_models_before_torch_loads(tmp_path):
    result, output = _probe("medxfer.cli.score", ["model=efficientnet_litee0"], tmp_path)
    assert result["code"] not in (0, None)
    assert "efficientnet_litee0" in output
    assert all(m in output for m in ("efficientnet_lite0", "efficientnet_lite1", "resnet18"))  # the choices
    assert result["heavy"] == [], f"imported before the config was checked: {result['heavy']}"
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("module,args", [
    ("medxfer.cli.finetune", ["dataset=synthetic_dermm"]),
    ("medxfer.cli.study", ["no_such_option=1"]),
    ("medxfer.cli.study", ["experiment=papr"]),  # an optional group once composed the default study silently
    ("medxfer.cli.analyze", ["tracking=sqlitee"]),
    ("medxfer.cli.rank", ["model=efficientnet_litee0"]),
    ("medxfer.cli.data", ["dataset=isic2019x"]),
])
def test_every_command_refuses_a_bad_option_before_torch_loads(tmp_path, module, args):
    result, output = _probe(module, args, tmp_path)
    assert result["code"] not in (0, None), output[-2000:]
    assert args[0].split("=")[-1] in output or args[0].split("=")[0] in output
    assert result["heavy"] == [], f"{module} imported {result['heavy']} before the config was checked"


def test_console_script_typo_names_the_models(tmp_path):
    proc = subprocess.run([str(BIN / "medxfer-score"), "model=efficientnet_litee0"], cwd=tmp_path,
                          env={**os.environ, "MEDXFER_ROOT": str(tmp_path)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Could not find 'model/efficientnet_litee0'" in proc.stderr and "efficientnet_lite0" in proc.stderr


def test_user_config_dir_adds_a_model(tmp_path):
    """``--config-dir`` adds a user's folder to the shipped configs: a model config of one's own composes."""
    shipped = Path(__import__("medxfer.config", fromlist=["config_dir"]).config_dir())
    (tmp_path / "mine" / "model").mkdir(parents=True)
    text = (shipped / "model" / "efficientnet_lite0.yaml").read_text()
    (tmp_path / "mine" / "model" / "my_lite0.yaml").write_text(
        "\n".join("name: my_lite0" if ln.startswith("name:") else ln for ln in text.splitlines()) + "\n")
    proc = subprocess.run([str(BIN / "medxfer-score"), "--config-dir", str(tmp_path / "mine"), "model=my_lite0",
                           "--cfg", "job"], cwd=tmp_path, env={**os.environ, "MEDXFER_ROOT": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "name: my_lite0" in proc.stdout and "arch: tf_efficientnet_lite0" in proc.stdout


def test_unreachable_hub_is_given_up_at_once(monkeypatch):
    """No network (the hub's host does not resolve) and HF_HUB_OFFLINE unset: the weights error names why,
    without huggingface_hub's minute of retries."""
    from medxfer.models import hub
    from medxfer.models.zoo import ModelSpec, WeightsNotFound, resolve_weights

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.medxfer-test.invalid")  # .invalid never resolves (RFC 2606)
    hub._reachable.cache_clear()
    spec = ModelSpec.from_config({"name": "resnet18", "arch": "resnet18", "hub": True})
    t0 = time.perf_counter()
    with pytest.raises(WeightsNotFound, match=r"hub\.medxfer-test\.invalid:443 cannot be reached"):
        resolve_weights(spec)
    with pytest.raises(WeightsNotFound):
        resolve_weights(spec)  # asked again: the answer is cached, not a second connection attempt
    assert hub._reachable.cache_info().misses == 1
    assert time.perf_counter() - t0 < 2 * hub.CONNECT_TIMEOUT_S  # one attempt at most, never the retry loop
    hub._reachable.cache_clear()


def test_hub_offline_variable_is_the_reason(monkeypatch):
    from medxfer.models.hub import hub_offline_reason

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_offline_reason() == "HF_HUB_OFFLINE is set"
