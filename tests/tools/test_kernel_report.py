"""``python -m adatriton.tools.kernel_report``: the compiled-kernel report per adaptive conv, without a GPU."""

import csv

import pytest

from adatriton.tools import kernel_report

# A loop of cuobjdump -sass as the report reads it: addresses, a backward branch, NOPs not counted.
SASS = """
        /*0100*/                   MOV R1, c[0x0][0x28] ;
        /*0110*/                   IMAD R2, R3, 0x2, RZ ;
        /*0120*/                   LDGSTS.E.BYPASS.128 [R4], desc[UR4][R6.64] ;
        /*0130*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0140*/                   HGMMA.64x128x16.F32 R24, gdesc[UR8], R24 ;
        /*0150*/                   SHFL.IDX PT, R5, R5, RZ, 0x1f ;
        /*0160*/                   NOP ;
        /*0170*/               @P0 BRA 0x110 ;
        /*0180*/                   EXIT ;
        /*0190*/                   BRA 0x190;
"""


def test_loop_stats_counts_the_dot_loop():
    assert kernel_report.loop_stats(SASS) == {
        "instructions": 6,
        "mma": 1,
        "barriers": 1,
        "shuffles": 1,
        "shared": 0,
        "divisions": 0,
    }
    assert kernel_report.loop_stats(SASS.replace("HGMMA.64x128x16.F32", "IADD3")) is None


@pytest.mark.aot
def test_report_of_a_small_model(tmp_path, capsys):
    """ResNet-50 8->32 at 32x64 in fp16 for sm_90: one row per adaptive conv, every column filled, both operands
    equally multi-buffered with the pipelined wait depth, no spills (weights NCHW, as convert leaves them)."""
    out = tmp_path / "report.csv"
    args = ["--model", "resnet50", "--conversion", "8->32", "--size", "32", "64", "--dtype", "float16"]
    assert kernel_report.main([*args, "--arch", "90", "--out", str(out)]) == 0
    assert "distinct kernels compiled for sm_90" in capsys.readouterr().out
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == kernel_report.COLUMNS
        rows = list(reader)
    # layer3 (6 blocks) and layer4 (3 blocks): 3 convs each, plus the two strided shortcuts
    assert len(rows) == 29
    assert {r["layer"] for r in rows} >= {"layer3.0.downsample.0", "layer4.2.conv3", "layer3.5.conv2"}
    for r in rows:
        assert all(r[c] != "" for c in kernel_report.COLUMNS), r
        assert r["arch"] == "sm_90" and r["sms"] == "132"
        assert int(r["a_buffers"]) == int(r["b_buffers"]) >= 2, r
        assert int(r["spill_bytes"]) == 0, r
        stages = int(r["config"].split("-s")[1].split("-")[0])
        assert int(r["loop_wait_group"]) >= 2 * (stages - 2), r
        assert int(r["mma_per_iter"]) >= 1 and int(r["instructions_per_iter"]) > int(r["mma_per_iter"])
        assert float(r["waves"]) == round(int(r["tiles"]) / 132, 2)
