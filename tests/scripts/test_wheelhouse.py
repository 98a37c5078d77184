"""scripts/wheelhouse.py without the network: which resolved packages the node's own stack brings (extras followed,
markers evaluated for the target, nothing reached through a package the node lacks), and the pins it carries."""

from scripts import wheelhouse


def _graph(**requires):
    return {name.replace("_", "-"): {"version": "1", "requires": reqs} for name, reqs in requires.items()}


def test_node_provided_follows_extras_and_markers_but_not_what_the_node_lacks(monkeypatch):
    monkeypatch.setattr(wheelhouse, "NODE_HAS", ("torch==2.11.0", "transformers"))
    graph = _graph(
        torch=["cuda-toolkit[cublas]==13.0.2; platform_system == 'Linux'", "filelock", "pywin; os_name == 'nt'"],
        cuda_toolkit=["nvidia-cublas; extra == 'cublas'", "nvidia-cufft; extra == 'cufft'"],
        nvidia_cublas=[], nvidia_cufft=[], filelock=[], pywin=[],
        transformers=["typer"], typer=["pydantic>=2"], pydantic=["pydantic-core==2.5", "annotated-types"],
        pydantic_core=[], annotated_types=[],
        deepspeed=["pydantic", "hjson", "torch"], hjson=[],
    )  # fmt: skip
    provided = wheelhouse.node_provided(graph, "3.12")
    assert provided == {"torch", "cuda-toolkit", "nvidia-cublas", "filelock", "transformers", "typer"}
    carried = sorted(set(graph) - provided)  # pydantic is on the node's "lacks" list: it and its own deps go along
    assert carried == ["annotated-types", "deepspeed", "hjson", "nvidia-cufft", "pydantic", "pydantic-core", "pywin"]


def test_needs_are_carried_at_the_requirements_pins():
    pins = wheelhouse.pins()
    assert pins["deepspeed"] == "deepspeed==0.19.8" and pins["datasets"].startswith("datasets==")
    assert all(name in pins for name in wheelhouse.NEEDS)


def test_platform_tags_cover_older_manylinux_wheels():
    flags = wheelhouse.target_flags("3.12")
    plats = [flags[i + 1] for i, f in enumerate(flags) if f == "--platform"]
    assert "manylinux_2_28_x86_64" in plats and "manylinux2014_x86_64" in plats and "manylinux_2_17_x86_64" in plats
    assert flags[:2] == ["--python-version", "3.12"] and "--only-binary=:all:" in flags
