"""Rebuild .dvc/plots_template.html: DVC's plots page with Vega, Vega-Lite and Vega-Embed
inlined, so `dvc plots show` and `dvc plots diff` render with no network.

DVC's own page loads those three scripts from a public CDN; `.dvc/config` points
`plots.html_template` at this file instead. The versions are pinned to the majors
dvc-render 1.0 (DVC 3.67) writes its specs for (Vega 5, Vega-Lite 5, Vega-Embed 6), and each
package tarball must match its pinned npm integrity hash. Run `make plots-template` after
changing a pin (it needs `npm` and the npm registry); nothing else runs this script.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / ".dvc" / "plots_template.html"

#: (npm package, exact version, npm integrity of its tarball, the browser bundle in it)
PACKAGES = (
    ("vega", "5.33.1",
     "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCav"
     "Y1LcrbHUskQbGUP8gXOzyQw==",
     "package/build/vega.min.js"),
    ("vega-lite", "5.23.0",
     "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2"
     "gs/y4DYTs/RPoTeYAuEg6mA==",
     "package/build/vega-lite.min.js"),
    ("vega-embed", "6.29.0",
     "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/Gzdr"
     "kceXFma+FDHNXUppKuM0U6Q==",
     "package/build/vega-embed.min.js"),
)

# dvc-render fills these three placeholders; without a scripts placeholder it adds no
# script tags of its own (see dvc_render.html.HTML.embed).
PAGE = """<!DOCTYPE html>
<!-- DVC plots page for offline use, made by tools/build_plots_template.py (make
     plots-template); do not edit. Inlined: {packages}. -->
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC Plot</title>
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def npm_bundle(package: str, version: str, integrity: str, member: str, work: Path) -> str:
    """The bundle ``member`` from the package tarball ``npm pack`` fetches, after checking
    the tarball against ``integrity``."""
    out = subprocess.run(["npm", "pack", f"{package}@{version}", "--json", "--silent"],
                         cwd=work, check=True, capture_output=True, text=True).stdout
    tarball = work / json.loads(out)[0]["filename"]
    digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if f"sha512-{digest}" != integrity:
        raise SystemExit(f"{package}@{version}: tarball sha512-{digest} is not the pinned "
                         f"{integrity}")
    with tarfile.open(tarball) as tar:
        code = tar.extractfile(member).read().decode("utf-8")
    # The source-map comment would make a browser's devtools look for a file we do not ship.
    return re.sub(r"\n?//# sourceMappingURL=\S+\s*$", "\n", code)


def script_tag(package: str, version: str, code: str) -> str:
    for text in ("</script", "{plot_divs}", "{scripts}", "{refresh_tag}"):
        if text in code:  # would end the tag early, or be replaced by dvc-render
            raise SystemExit(f"{package}@{version}: the bundle contains {text!r}")
    return f"    <script>/* {package}@{version} */\n{code.strip()}\n    </script>"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="tlearn-plots-") as tmp:
        tags = [script_tag(name, version, npm_bundle(name, version, integrity, member, Path(tmp)))
                for name, version, integrity, member in PACKAGES]
    packages = ", ".join(f"{name}@{version}" for name, version, _, _ in PACKAGES)
    page = PAGE.format(packages=packages, scripts="\n".join(tags))
    partial = TEMPLATE.with_name(TEMPLATE.name + ".tmp")
    partial.write_text(page, encoding="utf-8")
    partial.replace(TEMPLATE)
    print(f"{TEMPLATE.relative_to(REPO)}: {len(page.encode()) / 1e6:.2f} MB ({packages})")


if __name__ == "__main__":
    main()
