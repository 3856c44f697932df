"""Test-wide settings: the Triton interpreter on the CPU, the markers applied by test id (`aot`, `subprocess`, `slow`),
a GPU skip without CUDA and a cache dir of its own for each test process."""

import os
from pathlib import Path

# Must be set before any @triton.jit function is defined (kernels are imported lazily by the tests).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

TESTS = Path(__file__).resolve().parent


def _share_the_cores_between_workers() -> None:
    """Under pytest-xdist, each worker's torch (and the processes it starts: inductor's compile workers, the
    subprocess tests) gets its share of the cores instead of all of them: 2 workers x 2 intra-op threads on 2 cores
    oversubscribe, and ATen's spinning barriers then wait for a core that the other worker holds."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // workers)
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(threads))


_share_the_cores_between_workers()

#: Markers applied here by test id prefix (path relative to tests/, then ``::name``), so that the files of the tests
#: need not change: ``aot``: the ahead-of-time compiles; ``subprocess``: tests that start other Python processes (a
#: fresh interpreter, spawned DDP workers); ``slow``: the tests of the ``make test-fast`` paths that take longest under
#: the interpreter. Every prefix must match a test of its file whenever that file is collected (see below).
MARKED_BY_ID = {
    "aot": ("aot/",),
    "subprocess": (
        "tools/test_cli.py::test_python_dash_m_entry_points_still_work",
        "tools/test_train_ddp.py::",
    ),
    # The slowest of `make test-fast`'s paths (--durations, 2 workers): whole networks and opcheck / gradcheck sweeps.
    "slow": (
        "nn/test_modules.py::test_softpool_uniform_levels_equal_the_dense_softpool_network",
        "nn/test_modules.py::test_softpool_mixed_levels_equal_dense_simulation",
        "nn/test_modules.py::test_deformable_level0_equals_the_dense_deformable_network",
        "nn/test_modules.py::test_deformable_mixed_levels_equal_dense_simulation",
        "nn/test_modules.py::test_convert_filter_fn_swaps_the_layers_it_picks_in_place",
        "nn/test_compile.py::test_compiled_converted_model_equals_eager_without_graph_breaks",
        "nn/test_compile.py::test_gather_conv_op_passes_opcheck",
        "ops/test_double_backward.py::test_gather_conv_backward_op_passes_opcheck_and_gradcheck",
        "models/test_autocast.py::test_autocast_bf16_cpu_training_step_has_finite_gradients",
        "models/test_autocast.py::test_autocast_bf16_cpu_converted_resnet50_matches_float32",
        "models/test_segmentation.py::test_mixed_levels_equal_dense_simulation",
        "models/test_segmentation.py::test_level_zero_equals_dense_os8",
        "models/test_checkpoints.py::test_round_trip_converted_segmentation_models_and_outputs",
        "models/test_resnet.py::test_uniform_logits_equal_torchvision_at_aligned_size",
        # Whole networks above ~3 s of CPU each (a process_time profile of the suite): segmentation models, model zoo
        # and decoder conversions, compile and export, checkpoint round trips of the large models.
        "models/test_segmentation.py::test_dense_os8_equals_torchvision",
        "models/test_segmentation.py::test_conversion_shares_weights_and_state_dict_keys",
        "models/test_segmentation.py::test_builders_match_torchvision_layout",
        "models/test_segmentation.py::test_convert_intermediate_layer_getter",
        "models/test_segmentation.py::test_train_mode_backpropagates_into_backbone_and_heads",
        "models/test_deploy.py::test_compiled_model_takes_new_maps_without_recompiling",
        "models/test_deploy.py::test_compiled_fullgraph_with_new_maps_equals_eager",
        "models/test_deploy.py::test_map_built_under_inference_mode_serves_training",
        "models/test_zoo.py::test_level0_equals_the_dense_dilated_network",
        "models/test_zoo.py::test_compiles_without_graph_breaks",
        "models/test_graph_decoders.py::test_torchvision_fcn_and_deeplab_uniform_level0_equal_the_original",
        "models/test_graph_property.py::test_random_cnns_convert_and_equal_the_simulation_or_raise_graph_conversion_error",
        "models/test_export.py::test_export_adaptive_equals_eager",
        "models/test_checkpoints.py::test_authors_training_checkpoint_of_deeplabv3_resnet101_keys",
        "models/test_checkpoints.py::test_wrappers_module_prefix_and_prefix_argument",
        "models/test_checkpoints.py::test_dilate_head_evaluates_an_os16_head_on_the_os8_grid",
        "models/test_checkpoints.py::test_round_trip_fcn_with_aux_and_deeplabv3plus",
        "models/test_checkpoints.py::test_paths_load_like_mappings",
        "models/test_convert_warnings.py::test_a_conversion_that_does_nothing_warns_with_its_counts",
        "models/test_convert_warnings.py::test_strict_raises_instead",
        "nn/test_modules.py::test_count_macs_of_softpool_and_deformable_networks",
        "nn/test_modules.py::test_make_deformable_adds_zero_offsets_to_the_last_block",
        "ops/test_ops.py::test_conv_is_differentiable",
        "models/test_convert_warnings.py::test_a_coarsest_level_dearer_than_the_original_warns_with_the_multiply_adds",
        "models/test_d2net.py::test_backends_agree[triton]",
        # torch.onnx.export (dynamo) and torch.compile of whole networks: 15-70 s each.
        "models/test_onnx.py::test_onnx_runtime_equals_eager_tiny",
        "models/test_onnx.py::test_plain_export_call_with_gradients_enabled",
        "models/test_export.py::test_compiled_triton_backend_traces_the_conv_op_with_new_maps",
        "models/test_export.py::test_export_dense_resnet_equals_eager",
        "models/test_export.py::test_export_dense_segmentation_with_a_levelmap_argument_equals_eager",
        # The odd input size of the ResNet-50 equalities (the even one stays in the inner loop), the zoo's
        # whole-network equalities (the graph path stays in through its decoder, fusion and hook tests), the large
        # segmentation backbones' error checks, and the interpreter's largest tiles (the small ones stay).
        "models/test_resnet.py::test_uniform_level_equals_torchvision[resnet50-odd",
        "models/test_resnet.py::test_mixed_levels_equal_dense_simulation[resnet50-odd",
        "models/test_zoo.py::test_max_level_equals_the_strided_network",
        "models/test_zoo.py::test_mixed_levels_equal_the_dense_simulation",
        "models/test_segmentation.py::test_adaptive_strides_need_levels[fcn_resnet1",
        "models/test_segmentation.py::test_adaptive_strides_need_levels[deeplabv3_resnet1",
        "models/test_segmentation.py::test_adaptive_strides_need_levels[deeplabv3plus_resnet1",
        "ops/test_kernel_conv.py::test_every_config_computes_the_fused_conv[128x256",
        "ops/test_kernel_conv.py::test_every_config_computes_the_fused_conv[256x128",
        "ops/test_kernel_conv.py::test_every_config_computes_the_fused_conv[64x256",
        "ops/test_kernel_conv.py::test_every_config_computes_the_fused_conv[256x64",
        "ops/test_kernel_conv.py::test_every_config_computes_the_fused_conv[128x128",
    ),
}

#: Test id prefixes whose tests share one xdist worker (``--dist loadgroup``): the AOT module's fixture queues every
#: compile of the session's AOT tests up front, so on several workers each would compile them all.
XDIST_GROUPS = {"aot/": "aot"}


def _apply_markers(items, whole_files: bool) -> None:
    """Add :data:`MARKED_BY_ID`'s markers and :data:`XDIST_GROUPS`' groups. When whole files are collected
    (``whole_files``), a prefix that names a collected file but none of its tests is an error, so that a renamed test
    cannot silently fall back into ``make test-fast``."""
    used = set()
    files = set()
    for item in items:
        rel = Path(item.path).resolve().relative_to(TESTS).as_posix()
        node = rel + item.nodeid[item.nodeid.index("::") :] if "::" in item.nodeid else rel
        files.add(rel)
        for prefix, group in XDIST_GROUPS.items():
            if node.startswith(prefix):
                item.add_marker(pytest.mark.xdist_group(group))
        for marker, prefixes in MARKED_BY_ID.items():
            for prefix in prefixes:
                if node.startswith(prefix):
                    item.add_marker(marker)
                    used.add(prefix)
    stale = [
        prefix
        for prefixes in MARKED_BY_ID.values()
        for prefix in prefixes
        if whole_files and prefix not in used and "::" in prefix and prefix.split("::")[0] in files
    ]
    if stale:
        raise pytest.UsageError(f"tests/conftest.py MARKED_BY_ID names tests that do not exist: {stale}")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    # `pytest tests/x.py::test_y` collects part of a file: the stale-prefix check would see the rest as missing.
    _apply_markers(items, whole_files=not any("::" in arg for arg in config.args))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is visible")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _own_cache_dir(tmp_path_factory):
    """Each test process (each xdist worker) gets its own ``$ADATRITON_CACHE_DIR``: no test reads this machine's cache
    or a file that another worker is writing. Tests that need a known directory still set their own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADATRITON_CACHE_DIR", str(tmp_path_factory.mktemp("adatriton-cache")))
        yield


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module (``pytestmark = pytest.mark.usefixtures("one_thread")``): small or
    float64 convs (ATen's per-group loop for grouped ones) gain little from a second thread, and on a shared 2-core
    machine its spinning barriers slow them down by up to an order of magnitude."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
