"""The private Dagster name the Delta IO manager relies on, ``DbIOManager`` from
``dagster._core.storage.db_io_manager`` (used by ``resources/delta_io.py``). Dagster can move
or change it in any release; these tests fail at once if it does, instead of the Delta IO
manager breaking at run time."""

import importlib
import inspect

import pytest

PRIVATE_MODULE = "dagster._core.storage.db_io_manager"
KEYWORDS = {"type_handlers", "db_client", "database", "schema", "io_manager_name", "default_load_type"}


def _db_io_manager():
    try:
        module = importlib.import_module(PRIVATE_MODULE)
    except ImportError as exc:
        pytest.fail(f"{PRIVATE_MODULE} is gone ({exc}): resources/delta_io.py needs a new way to "
                    "build the Delta IO manager")
    if not hasattr(module, "DbIOManager"):
        pytest.fail(f"{PRIVATE_MODULE}.DbIOManager is gone: resources/delta_io.py needs a new way to "
                    "build the Delta IO manager")
    return module.DbIOManager


def test_db_io_manager_still_takes_the_keywords_delta_io_passes():
    params = inspect.signature(_db_io_manager().__init__).parameters
    missing = KEYWORDS - set(params)
    assert not missing, f"DbIOManager.__init__ lost {sorted(missing)}; it now takes {list(params)}"
    positional = [n for n in KEYWORDS if params[n].kind not in (inspect.Parameter.KEYWORD_ONLY,
                                                                 inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    assert not positional, f"DbIOManager.__init__ no longer accepts {positional} by keyword"
    required = {n for n, p in params.items() if n != "self" and p.default is inspect.Parameter.empty
                and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}
    assert required <= KEYWORDS, f"DbIOManager.__init__ now requires {sorted(required - KEYWORDS)}"


@pytest.mark.filterwarnings("ignore:The `dict` method is deprecated")  # upstream's create_io_manager
def test_delta_io_uses_the_same_class_as_upstream(tmp_path):
    """Upstream's own IO manager still builds this class, so the override in resources/delta_io.py
    still mirrors it, and it builds one itself."""
    from dagster_deltalake import LocalConfig
    from dagster_deltalake_polars import DeltaLakePolarsIOManager

    from resources import delta_io

    db_io_manager = _db_io_manager()
    assert delta_io.DbIOManager is db_io_manager
    upstream = DeltaLakePolarsIOManager(root_uri=str(tmp_path), schema="lgsid", storage_options=LocalConfig())
    assert isinstance(upstream.create_io_manager(None), db_io_manager)
    ours = delta_io.delta_io_manager(str(tmp_path))
    assert isinstance(ours.create_io_manager(None), db_io_manager)
