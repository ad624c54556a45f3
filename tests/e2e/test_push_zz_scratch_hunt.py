"""SCRATCH (to be deleted): hunt an in-process re-push hang after a SIGKILLed push."""
from __future__ import annotations
import gc, os, random, subprocess, sys, threading, time, asyncio, traceback
import pytest
from tests.e2e.test_push import _push, _token_file
from tests.e2e.test_push_killed import _trial_closures, closure_problems
from tests.client.storekit import delete

TRIALS = int(os.environ.get("HUNT_TRIALS") or 60)

def _dump(tag):
    out = [f"==== {tag}"]
    for obj in gc.get_objects():
        if isinstance(obj, asyncio.Task) and not obj.done():
            out.append(repr(obj))
            for f in obj.get_stack(limit=30):
                out.append(f"   {f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}")
    for tid, frame in sys._current_frames().items():
        out.append(f"-- thread {tid}")
        out.extend(traceback.format_stack(frame))
    return "\n".join(out)

def test_hunt(start_daemon, tmp_path, capsys, request):
    calibration, *closures = _trial_closures(tmp_path / "build", TRIALS + 1)
    request.addfinalizer(lambda: delete(*calibration, *(p for c in closures for p in c)))
    daemon = start_daemon()
    token = _token_file(tmp_path, daemon)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIKS3_")}
    def argv(root):
        return [sys.executable, "-m", "niks3d.client", "push", root, "--server", daemon.url, "--token-file", token, "--no-progress"]
    subprocess.run(argv(calibration[0]), check=True, env=env, capture_output=True)
    rng = random.Random(1)
    for trial, paths in enumerate(closures):
        with subprocess.Popen(argv(paths[0]), stderr=subprocess.PIPE, text=True, env=env) as child:
            time.sleep(rng.uniform(0.3, 1.8))
            child.kill()
            _, stderr = child.communicate(timeout=60)
        assert not closure_problems(daemon.s3)
        done = threading.Event()
        def watchdog():
            if not done.wait(90):
                with open("/tmp/stress/hang-dump.txt", "w") as f:
                    f.write(f"trial {trial}\nkilled stderr:\n{stderr}\n" + _dump("hang"))
        w = threading.Thread(target=watchdog, daemon=True); w.start()
        code, doc, err = _push(daemon, tmp_path, capsys, paths[0])
        done.set()
        assert code == 0, err
        print(f"trial {trial} ok", file=sys.__stderr__, flush=True)
