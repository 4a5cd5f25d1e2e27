"""The dotenv attack of issue 14 against the sandbox: someone who may write one source secret puts
shell syntax or a python-dotenv expansion in it; the blob target and `vaultrelay resolve --format
dotenv` must write something that, sourced or loaded, gives back exactly that text and runs
nothing, or refuse naming the variable (never the value) and write nothing.
(`GET /api/envs/{env}?format=dotenv` is attacked in tests/functions/test_http_api.py.)"""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

from azure.storage.blob import ContainerClient
from dotenv import dotenv_values

from core.cli import EXIT_RESOLUTION, main
from tests.configs import blob_target, body_yaml, secret_ref
from tests.world import World


def attack(marker: Path) -> str:
    return f"p@ss `touch {marker}` $(touch {marker}) \\n'\"#"


def source(text: str, tmp_path: Path, name: str) -> str:
    path = tmp_path / "sourced.env"
    path.write_text(text)
    done = subprocess.run(["sh", "-c", '. "$1"; eval "printf %s \\"\\${$2}\\""', "sh", str(path), name],
                          capture_output=True, timeout=20, env={"PATH": os.environ["PATH"]})
    assert done.returncode == 0 and not done.stderr, done.stderr
    return done.stdout.decode()



def test_blob_target_dotenv_is_inert_and_a_value_python_dotenv_would_expand_is_refused(world: World, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = attack(marker).replace("'", "")  # `'` and `$` together cannot be written; see the refusal below
    name = world.secret("evil", evil)
    body = body_yaml(envs={"app": {"EVIL": secret_ref(name), "OTHER": "other-value"}},
                     targets={"blob": blob_target("app", f"evil-{world.tag}.env")})
    (pushed,) = world.engine(body).sync().targets
    assert (pushed.outcome, pushed.error) == ("pushed", None)
    blob = ContainerClient(world.sandbox.storage_endpoint("sandboxdata"), "bundles", credential=world.admin).get_blob_client(f"evil-{world.tag}.env")
    text = blob.download_blob().readall().decode()
    assert source(text, tmp_path, "EVIL") == evil and not marker.exists()
    assert dotenv_values(stream=io.StringIO(text)) == {"EVIL": evil, "OTHER": "other-value"}

    # One secret pulling another variable into itself through python-dotenv's ${...}: refused,
    # the blob left as it was, the error naming the variable and not the value.
    world.source.set_secret(name, "https://attacker.example/?stolen=${OTHER}")
    (refused,) = world.engine(body).sync().targets
    assert refused.outcome == "error" and refused.error
    assert "EVIL: it contains ${...}, which python-dotenv expands" in refused.error and "attacker" not in refused.error
    assert blob.download_blob().readall().decode() == text


def test_resolve_dotenv_is_inert_or_refused_with_nothing_printed(world: World, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = attack(marker).replace("'", "")
    name = world.secret("evil", evil)
    config = tmp_path / "vaultrelay.yaml"
    config.write_text(f"version: 1\nsecretStores:\n  azure: {{type: azure.managed_identity}}\nenvs:\n  app:\n"
                      f"    EVIL: {{from: {{store: azure, vault: kv-source, secret: {name}}}}}\n")
    out, err = io.StringIO(), io.StringIO()
    assert main(["--config", str(config), "resolve", "--env", "app", "--format", "dotenv", "--reveal"], stdout=out, stderr=err) == 0
    assert source(out.getvalue(), tmp_path, "EVIL") == evil and not marker.exists()

    world.source.set_secret(name, attack(marker))  # both ' and $: no quoting reads it back in sh and python-dotenv
    out, err = io.StringIO(), io.StringIO()
    code = main(["--config", str(config), "resolve", "--env", "app", "--format", "dotenv", "--reveal"], stdout=out, stderr=err)
    assert code == EXIT_RESOLUTION and out.getvalue() == ""
    assert "error: env app: cannot be written as dotenv: EVIL: it has ' or" in err.getvalue()
    assert "touch" not in err.getvalue() and "p@ss" not in err.getvalue()
