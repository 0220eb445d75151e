"""Screenshots of every dashboard page for one store (docs/dashboard.png comes from the demo store).

    python bench/dashboard_screenshots.py --store demo-out/store --trait harmful --out docs

Needs a headless Chromium (see ``traitlens.testing.browser``). Pages: overview, the trait (its
heatmap), the picked vector, its tokens, and the SQL console with a query run.
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from pathlib import Path

from traitlens.testing import browser as support
from traitlens.workflows.dashboard.app import create_app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--trait", required=True)
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    missing = support.browser_missing()
    if missing:
        raise SystemExit(missing)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    driver = support.headless_chromium(1300, 900)
    try:
        with support.served(create_app(args.store)) as url:
            pick = json.load(urllib.request.urlopen(f"{url}/api/traits/{args.trait}"))["pick"]
            for name, route, css in [("overview", "#/", "#traits"), ("trait", f"#/trait/{args.trait}", "rect.cell"),
                                     ("vector", f"#/vector/{pick}", "#provenance"),
                                     ("tokens", f"#/tokens/{pick}", "#held"), ("sql", "#/sql", "#sql-text")]:
                driver.get(f"{url}/{route}")
                support.wait_for(driver, css)
                if name == "sql":
                    driver.find_element("id", "sql-run").click()
                    support.wait_for(driver, "#sql-table")
                path = out / f"dashboard-{name}.png"
                driver.save_screenshot(str(path))
                print(path)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
