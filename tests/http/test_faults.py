"""A failure of the engine inside a step, over real HTTP (MB_FAULT_FORWARD makes the N-th forward
of the process fail, as a CUDA error would): the requests of that step get a 500 JSON error and
the daemon keeps serving; when the device is lost for good (":lost", a sticky CUDA error) the
daemon fails the step's requests, refuses new work with 503 and exits with status 1 so that a
supervisor restarts it. Runs against any --device ($MB_DEVICE)."""
import time

from mbserver import Server, run

REQ = {"prompt": "Hello", "max_tokens": 8, "temperature": 0}


def test_step_failure_is_a_500_and_the_daemon_serves_on():
    # forward 1 is the prompt, forward 2 (the first decode step) fails
    with Server("--slots", "4", env={"MB_FAULT_FORWARD": "2"}) as srv:
        status, out, _ = srv.request("POST", "/v1/completions", REQ)
        assert status == 500, (status, out)
        assert out["error"]["code"] == "engine_error" and "injected fault" in out["error"]["message"], out
        srv.wait_idle()
        status, out, _ = srv.request("POST", "/v1/completions", REQ)
        assert status == 200 and len(out["choices"][0]["text"].encode()) > 0, (status, out)
        assert srv.request("GET", "/health")[0] == 200


def test_lost_device_fails_the_step_and_exits_1():
    srv = Server("--slots", "4", env={"MB_FAULT_FORWARD": "2:lost"})
    status, out, _ = srv.request("POST", "/v1/completions", REQ)
    assert status == 500 and "injected fault" in out["error"]["message"], (status, out)
    deadline = time.time() + 30
    while srv.proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    rc = srv.proc.poll()
    log = srv.output()
    assert rc == 1, f"exit status {rc}:\n{log[-3000:]}"
    assert "the device has failed" in log, log[-3000:]


if __name__ == "__main__":
    run([test_step_failure_is_a_500_and_the_daemon_serves_on, test_lost_device_fails_the_step_and_exits_1])
