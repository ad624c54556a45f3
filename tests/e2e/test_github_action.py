"""The GitHub Action (action.yml): its YAML parses, its scripts take inputs only from the environment, and its
steps, run the way GitHub's runner runs a composite action's steps (bash -eo pipefail, GITHUB_ENV, GITHUB_PATH,
GITHUB_OUTPUT, the OIDC token request URL served by the test's issuer), build, push with the job's OIDC token
against the real daemon and make Nix 2.8 substitute from the cache."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.client.storekit import build_fresh
from tests.e2e.test_oidc import _owners, issuer, oidc_daemon  # noqa: F401 (fixtures)
from tests.server.oidckit import AUDIENCE, Issuer

ROOT = Path(__file__).resolve().parents[2]
ACTION = ROOT / "action.yml"
_EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def _action() -> dict[str, Any]:
    document = yaml.safe_load(ACTION.read_text())
    assert isinstance(document, dict)
    return document


def test_the_action_is_composite_and_its_scripts_never_paste_an_expression():
    action = _action()
    assert action["runs"]["using"] == "composite"
    declared = set(action["inputs"])
    used: set[str] = set()
    ids = set()
    for step in action["runs"]["steps"]:
        assert step["shell"] == "bash", step["name"]
        # An input pasted into the script would be shell code (a ref named `$(curl ...)`): only env carries them.
        assert "${{" not in step["run"], step["name"]
        assert "if" not in step, step["name"]
        for value in step.get("env", {}).values():
            for expression in _EXPRESSION.findall(str(value)):
                kind, _, name = expression.partition(".")
                assert kind in ("inputs", "github", "steps"), expression
                if kind == "inputs":
                    used.add(name)
                if kind == "steps":
                    assert name.split(".")[0] in ids, expression  # an earlier step's output
        ids.add(step.get("id"))
    assert used == declared, declared ^ used
    for name, spec in action["inputs"].items():
        assert spec.get("description"), name
        assert spec.get("required") or "default" in spec, name


def test_the_gitlab_template_asks_for_the_id_token_that_niks3_reads():
    from niks3d.client.oidc import DEFAULT_VARIABLE

    template = yaml.safe_load((ROOT / "examples" / "ci" / "gitlab-ci.yml").read_text())
    job = template["niks3-build"]
    assert job["id_tokens"] == {DEFAULT_VARIABLE: {"aud": "$NIKS3_SERVER_URL"}}
    script = "\n".join(job["script"])
    assert "--oidc gitlab" in script and "--token-file" not in script
    assert "extra-substituters = $NIKS3_SERVER_URL" in job["variables"]["NIX_CONFIG"]


def _file_commands(path: Path) -> dict[str, str]:
    """What a step wrote to GITHUB_ENV or GITHUB_OUTPUT: NAME=value lines and NAME<<DELIMITER blocks."""
    found: dict[str, str] = {}
    lines = iter(path.read_text().splitlines())
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            value = []
            for more in lines:
                if more == delimiter:
                    break
                value.append(more)
            else:
                raise AssertionError(f"{path.name}: {name} has no closing {delimiter}")
            found[name] = "\n".join(value)
        elif line:
            name, _, value = line.partition("=")
            found[name] = value
    return found


class Runner:
    """Runs action.yml's steps as GitHub's runner does for `uses: <this repository>@<ref>`."""

    def __init__(self, tmp: Path, environ: dict[str, str]) -> None:
        self.tmp = tmp
        self.environ = environ
        self.github_env: dict[str, str] = {}
        self.github_path: list[str] = []
        self.outputs: dict[str, dict[str, str]] = {}

    def _evaluate(self, value: str, inputs: dict[str, str], defaults: dict[str, str]) -> str:
        def one(match: re.Match[str]) -> str:
            kind, _, name = match.group(1).partition(".")
            if kind == "inputs":
                return inputs.get(name, defaults[name])
            if kind == "github" and name == "action_path":
                return str(ROOT)
            if kind == "steps":
                step, _, output = name.partition(".outputs.")
                return self.outputs.get(step, {}).get(output, "")
            raise AssertionError(f"the test does not know {match.group(0)}")

        return _EXPRESSION.sub(one, value)

    def run(self, inputs: dict[str, str]) -> list[subprocess.CompletedProcess[str]]:
        action = _action()
        defaults = {name: str(spec.get("default", "")) for name, spec in action["inputs"].items()}
        assert set(inputs) <= set(defaults), set(inputs) - set(defaults)
        missing = [n for n, spec in action["inputs"].items() if spec.get("required") and n not in inputs]
        assert not missing, missing
        done = []
        for number, step in enumerate(action["runs"]["steps"]):
            files = {n: self.tmp / f"{n.lower()}-{number}" for n in ("GITHUB_ENV", "GITHUB_PATH", "GITHUB_OUTPUT")}
            for path in files.values():
                path.write_text("")
            script = self.tmp / f"step-{number}.sh"
            script.write_text(step["run"])
            env = {**self.environ, **self.github_env, **{n: str(p) for n, p in files.items()}}
            env["PATH"] = os.pathsep.join([*reversed(self.github_path), env["PATH"]])
            env["GITHUB_ACTION_PATH"] = str(ROOT)
            env.update({k: self._evaluate(str(v), inputs, defaults) for k, v in step.get("env", {}).items()})
            completed = subprocess.run(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            done.append(completed)
            assert completed.returncode == 0, (step["name"], completed.stdout, completed.stderr)
            self.github_env.update(_file_commands(files["GITHUB_ENV"]))
            self.github_path += [line for line in files["GITHUB_PATH"].read_text().splitlines() if line]
            if "id" in step:
                self.outputs[step["id"]] = _file_commands(files["GITHUB_OUTPUT"])
        return done


@pytest.fixture
def runner(tmp_path: Path, issuer: Issuer) -> Iterator[Runner]:  # noqa: F811
    temp = tmp_path / "runner-temp"
    temp.mkdir()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("NIKS3_", "NIX_CONFIG", "GITHUB_"))}
    environ.update(
        {
            # What a job with `permissions: id-token: write` has: its token endpoint (here the test's issuer).
            "ACTIONS_ID_TOKEN_REQUEST_URL": issuer.github_url(),
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": issuer.request_token,
            "GITHUB_ACTIONS": "true",
            "RUNNER_TEMP": str(temp),
            # The runner trusts GitHub's endpoint through the system's CAs; here the issuer's test CA.
            "SSL_CERT_FILE": str(issuer.ca),
            # No cache.nixos.org on this machine: the action adds its cache to an empty list.
            "NIX_CONFIG": "substituters =",
            "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
        }
    )
    yield Runner(tmp_path, environ)


@pytest.mark.nix
@pytest.mark.postgres
@pytest.mark.s3
def test_the_action_builds_pushes_with_oidc_and_nix_substitutes_from_the_cache(
    oidc_daemon,  # noqa: F811
    issuer,  # noqa: F811
    runner,
    tmp_path,
):
    daemon = oidc_daemon()
    public_key = daemon.signing_keys[0].public_key().to_text()
    pushed = build_fresh(tmp_path, "action-pushed", "echo pushed-by-the-action > $out")
    link = tmp_path / "result"
    link.symlink_to(pushed)
    expr = tmp_path / "build.nix"
    salt = secrets.token_hex(8)
    expr.write_text(
        f'derivation {{ name = "action-built"; salt = "{salt}"; system = builtins.currentSystem; '
        'builder = "/bin/sh"; args = [ "-c" "echo built-by-the-action > $out" ]; }\n'
    )
    steps = runner.run(
        {
            "server": daemon.url + "/",
            "public-key": public_key,
            "audience": AUDIENCE,
            "install": "false",
            "build": f"-f {expr} --out-link {tmp_path / 'built'}",
            "push": f"  {link}\n\n",
        }
    )
    built = str((tmp_path / "built").readlink())
    assert runner.github_env["NIKS3_SERVER_URL"] == daemon.url
    assert runner.github_env["NIX_CONFIG"].splitlines() == [
        "substituters =",
        f"extra-substituters = {daemon.url}",
        f"extra-trusted-public-keys = {public_key}",
    ]
    assert runner.outputs["install"]["niks3"] == str(Path(sys.executable).parent / "niks3")
    assert issuer.github_requests >= 2  # the build step's and the push step's niks3 each asked for a token
    owners = asyncio.run(_owners(daemon.dsn))
    assert len(owners) >= 2 and set(owners) == {"oidc:github:acme/app"}, owners  # the build's and the push's
    output = "".join(s.stdout + s.stderr for s in steps)
    assert "eyJ" not in output and issuer.request_token not in output
    # Stock Nix 2.8 with the job's NIX_CONFIG substitutes both from the cache (the read proxy), signature checked.
    # (A cache directory of its own: the build step's Nix asked the cache for action-built before building it,
    # and Nix remembers the miss for an hour.)
    env = {**runner.environ, "NIX_CONFIG": runner.github_env["NIX_CONFIG"], "XDG_CACHE_HOME": str(tmp_path / "x2")}
    store = tmp_path / f"fresh-store-{time.monotonic_ns()}"
    copied = subprocess.run(
        ["nix-store", "--store", str(store), "--realise", pushed, built],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert copied.returncode == 0, copied.stderr
    assert (store / pushed.lstrip("/")).read_text() == "pushed-by-the-action\n"
    assert (store / built.lstrip("/")).read_text() == "built-by-the-action\n"
