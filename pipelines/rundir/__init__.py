"""Run directories: paths, atomic files, the manifest and stage keys.

Layout under the runs root (``QEVAL_RUNS_DIR``, default ``./runs``)::

    runs/<model>/sweep.json                 sweep-level record (parent MLflow run)
    runs/<model>/signoff.{json,md,html}     the sign-off report
    runs/<model>/<scheme>/manifest.json     status, key, timing and outputs per stage
    runs/<model>/<scheme>/recipe.yaml       the resolved recipe
    runs/<model>/<scheme>/quantize/         checkpoint (model/), quantize.json, layer_errors.csv
    runs/<model>/<scheme>/eval/             perplexity.json, tasks.json, samples/<task>.jsonl
    runs/<model>/<scheme>/bench/            speed.json, memory.json, profile.json

Every file is written to a unique temporary name and moved into place with
``os.replace``, and a stage is marked finished in the manifest only after all
its outputs exist, so a killed stage never looks finished. manifest.json and
sweep.json are changed only under a file lock (read, change, write), so
concurrent sweeps, tracking and the Ray crash handler never lose an update.
"""

from pipelines.rundir.atomic import (  # noqa: F401
    atomic_directory,
    read_json,
    read_json_if_readable,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from pipelines.rundir.keys import stable_hash  # noqa: F401
from pipelines.rundir.manifest import Manifest, file_lock, locked_json, update_json  # noqa: F401
from pipelines.rundir.paths import (  # noqa: F401
    PROJECT_ROOT,
    SchemeDir,
    dir_bytes,
    model_dir,
    runs_root,
    scheme_dir,
)
