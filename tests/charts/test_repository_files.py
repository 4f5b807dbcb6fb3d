"""Repository files of the supply chain: the license the crates, images and charts declare,
and Dependabot's configuration, whose every directory must hold the manifest its ecosystem
reads, and which must cover every manifest in the repository. (In the chart suite because
it is the one that runs from the tools venv without building anything.)"""

import pathlib
import subprocess
import sys
import tomllib

import yaml

from conftest import ROOT

DEPENDABOT = ROOT / ".github/dependabot.yml"
SKIP_DIRS = {".git", "target", "node_modules", "__pycache__", ".pytest_cache"}


def repository_files():
    def walk(d):
        for p in sorted(d.iterdir()):
            if p.is_dir():
                if p.name not in SKIP_DIRS:
                    yield from walk(p)
            else:
                yield p

    return list(walk(ROOT))


def is_requirements(path):
    return path.suffix in (".txt", ".in") and "requirements" in path.name


def test_license_is_the_apache_2_text_the_crates_and_image_declare():
    text = (ROOT / "LICENSE").read_text()
    for line in (
        "Apache License",
        "Version 2.0, January 2004",
        "http://www.apache.org/licenses/",
        "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
        "9. Accepting Warranty or Additional Liability.",
        "END OF TERMS AND CONDITIONS",
        "APPENDIX: How to apply the Apache License to your work.",
    ):
        assert line in text, line
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())
    assert workspace["workspace"]["package"]["license"] == "Apache-2.0"
    for manifest in sorted(ROOT.glob("crates/*/Cargo.toml")) + [ROOT / "xtask/Cargo.toml"]:
        package = tomllib.loads(manifest.read_text())["package"]
        assert package.get("license") in ({"workspace": True}, "Apache-2.0"), manifest
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in (ROOT / "docker/Dockerfile").read_text()


def updates():
    config = yaml.safe_load(DEPENDABOT.read_text())
    assert config["version"] == 2
    return config["updates"]


def test_dependabot_config_matches_githubs_schema():
    check = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.dependabot", str(DEPENDABOT)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_dependabot_directory_holds_its_ecosystems_manifest():
    for update in updates():
        ecosystem, directory = update["package-ecosystem"], update["directory"]
        assert directory.startswith("/"), directory
        d = ROOT / directory.strip("/")
        assert d.is_dir(), f"{ecosystem}: {directory} does not exist"
        files = {p.name for p in d.iterdir() if p.is_file()}
        if ecosystem == "cargo":
            manifest = tomllib.loads((d / "Cargo.toml").read_text())
            assert "workspace" in manifest and "Cargo.lock" in files, directory
        elif ecosystem == "github-actions":
            assert list((d / ".github/workflows").glob("*.yml")), directory
        elif ecosystem == "pip":
            assert any(is_requirements(d / f) for f in files), f"pip: no requirements file in {directory}"
        elif ecosystem == "npm":
            assert "package.json" in files, directory
        elif ecosystem == "docker":
            assert any(f.startswith("Dockerfile") for f in files), directory
        else:
            raise AssertionError(f"no check for ecosystem {ecosystem}")


def test_cargo_minor_and_patch_updates_come_grouped():
    (cargo,) = [u for u in updates() if u["package-ecosystem"] == "cargo"]
    assert cargo["directory"] == "/"
    assert any(set(g.get("update-types", [])) == {"minor", "patch"} for g in cargo["groups"].values())


def test_every_manifest_in_the_repository_is_covered():
    covered = {(u["package-ecosystem"], u["directory"].rstrip("/") or "/") for u in updates()}

    def directory(path):
        rel = path.parent.relative_to(ROOT).as_posix()
        return "/" if rel == "." else f"/{rel}"

    # Member crates' manifests are the workspace's (root) update; templates are no manifests.
    wanted = {("cargo", "/"), ("github-actions", "/")}
    for path in repository_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("xtask/templates/"):
            continue
        if is_requirements(path):
            wanted.add(("pip", directory(path)))
        elif path.name == "package.json":
            wanted.add(("npm", directory(path)))
        elif path.name.startswith("Dockerfile"):
            wanted.add(("docker", directory(path)))
    assert wanted <= covered, f"not covered by .github/dependabot.yml: {sorted(wanted - covered)}"
