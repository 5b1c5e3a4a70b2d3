"""hvd_dc.protocol on its own: two real ranks exchange through the windows with a stand-in
server, and the typed messages survive the trip through MPI's pickling."""

import json
import pickle

import pytest
import torch

from hvd_dc.chunks import ChunkPlan
from hvd_dc.dc_math import DCOptions
from hvd_dc.layout import ModelSpec
from hvd_dc.protocol import Abort, Goodbye, ModelCheck, Register, Registration, Reply, ReplyStatus, WindowLayout
from mpi_run import run_mpi


def _servers(res, n):
    return [json.loads((res.out_dir / f"workerserver{s}.json").read_text()) for s in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("servers", [1, 2])
def test_every_reply_is_the_answer_to_its_request(tmp_path, servers):
    res = run_mpi(servers + 1, "protocol_ranks.py", "--servers", str(servers), "--requests", "24", out_dir=tmp_path,
                  timeout=90).check()
    worker = res.results()[0]
    assert worker["chunks"] >= 4 and set(worker["servers_of_chunks"]) == set(range(servers))
    assert worker["initial_ok"], "open() must read the reply areas the servers wrote before it"
    assert worker["mismatches"] == [], "a reply's header or weights differ from what the server wrote for it"
    assert worker["last_seq"] == 24
    for server in _servers(res, servers):
        assert all(a == [24] * len(server["chunks"]) for a in server["answered"])
        for c in server["chunks"]:
            mine = [(seq, kind) for chunk, seq, kind in server["seen"] if chunk == c]
            assert [s for s, _ in mine] == list(range(1, 25)), "each request answered once, in order, per chunk"
            assert [k for _, k in mine] == [2 if i % 4 == 3 else 1 for i in range(24)]


@pytest.mark.slow
def test_a_skipped_sequence_number_is_refused_and_the_wait_names_the_server(tmp_path):
    res = run_mpi(2, "protocol_ranks.py", "--case", "jump", "--requests", "10", out_dir=tmp_path, timeout=90).check()
    worker = res.results()[0]
    server = _servers(res, 1)[0]
    assert server["error"].startswith("worker 0 (world rank 1) jumped from request #2 to #4 (chunk ")
    assert all(a == 2 for a in server["answered"][0])
    assert "the parameter server (world rank 0) did not answer request #4 for " in worker["timeout_error"]
    assert "within 3 s" in worker["timeout_error"]


def test_messages_are_plain_picklable_values():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1)
    spec = ModelSpec.from_optimizer(opt, 2, dc=DCOptions.create("constant", 0.5))
    for msg in (Register(spec), Goodbye(), Abort("why"), ModelCheck(difference="d"),
                Registration(updates=3, pushes=(1, 2), staleness=({0: 1}, {}), server_device="cpu (window)"),
                Reply(4, ReplyStatus.OK, 9, 1, 0)):
        assert pickle.loads(pickle.dumps(msg)) == msg
    assert Registration().ok and not Registration(error="no").ok


def test_window_layout_aligns_every_area():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(5000)), torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))])
    spec = ModelSpec.from_optimizer(opt, 3, compression="fp16", chunk_bytes=4096)
    plan = ChunkPlan.for_spec(spec, 2)
    for s in range(2):
        wl = WindowLayout.for_server(spec, plan, s, 3)
        n = len(wl.chunks)
        offsets = [wl.push_offset(m, j) for m in range(3) for j in range(n)]
        offsets += [wl.reply_offset(m, j) for m in range(3) for j in range(n)]
        offsets += [wl.push_grad_offset, wl.reply_weights_offset]
        assert all(o % 64 == 0 for o in offsets)
        assert wl.push_grad_offset >= 64 + 8 * len(spec.hyper_slots)
        assert wl.total_nbytes == wl.data_nbytes + wl.ctrl_nbytes and wl.ctrl_nbytes == 3 * wl.ctrl_block_words * 8
        assert wl.ctrl_block_words * 8 >= 2 * n * 8
