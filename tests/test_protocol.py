"""hvd_dc.protocol on its own: two real ranks exchange through the windows with a stand-in
server, and the typed messages survive the trip through MPI's pickling."""

import json
import pickle

import torch

from hvd_dc.dc_math import DCOptions
from hvd_dc.layout import ModelSpec
from hvd_dc.protocol import Abort, Goodbye, ModelCheck, Register, Registration, Reply, ReplyStatus, WindowLayout
from mpi_run import run_mpi


def _server(res):
    return json.loads((res.out_dir / "workerserver.json").read_text())


def test_every_reply_is_the_answer_to_its_request(tmp_path):
    res = run_mpi(2, "protocol_pair.py", "--requests", "40", out_dir=tmp_path, timeout=90).check()
    worker = res.results()[0]
    server = _server(res)
    assert worker["initial_ok"], "open() must read the reply area the server wrote before it"
    assert worker["mismatches"] == [], "a reply's header or weights differ from what the server wrote for it"
    assert worker["last_seq"] == 40 and server["answered"] == [40]
    assert [s for _, s in server["seen"]] == list(range(1, 41)), "each request answered once, in order"
    assert [k for k, _ in server["seen"]] == [2 if i % 4 == 3 else 1 for i in range(40)]


def test_a_skipped_sequence_number_is_refused_and_the_wait_names_the_server(tmp_path):
    res = run_mpi(2, "protocol_pair.py", "--case", "jump", "--requests", "10", out_dir=tmp_path, timeout=90).check()
    worker = res.results()[0]
    server = _server(res)
    assert server["error"] == "worker 0 (world rank 1) jumped from request #2 to #4"
    assert server["answered"] == [2]
    assert "the parameter server (world rank 0) did not answer request #4 within 3 s" in worker["timeout_error"]


def test_messages_are_plain_picklable_values():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1)
    spec = ModelSpec.from_optimizer(opt, 2, dc=DCOptions.create("constant", 0.5))
    for msg in (Register(spec), Goodbye(), Abort("why"), ModelCheck(difference="d"),
                Registration(updates=3, pushes=(1, 2), staleness=({0: 1}, {}), server_device="cpu (window)"),
                Reply(4, ReplyStatus.OK, 9, 1, 0)):
        assert pickle.loads(pickle.dumps(msg)) == msg
    assert Registration().ok and not Registration(error="no").ok


def test_window_layout_aligns_every_area():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(5)), torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))])
    spec = ModelSpec.from_optimizer(opt, 3, compression="fp16")
    wl = WindowLayout.for_spec(spec, 3)
    offsets = [wl.push_offset(m) for m in range(3)] + [wl.reply_offset(m) for m in range(3)]
    offsets += [wl.push_grad_offset, wl.reply_weights_offset]
    assert all(o % 64 == 0 for o in offsets)
    assert wl.push_grad_offset >= 64 + 8 * len(spec.hyper_slots)
    assert wl.total_nbytes == 3 * (wl.push_nbytes + wl.reply_nbytes) + 3 * 64
