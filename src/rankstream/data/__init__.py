"""The data-in layer: file formats, the Online Retail converter, the time split, co-visitation and
the ranking instances every model is trained and judged on. Needs the `data` extra (pandas, pyarrow).
"""

from rankstream.data.covisit import covisitation, trending
from rankstream.data.formats import read_catalog, read_interactions, write_catalog, write_interactions
from rankstream.data.instances import Instance, build_instances, candidate_recall
from rankstream.data.prepare import Prepared, prepare
from rankstream.data.retail import ConvertReport, convert_online_retail
from rankstream.data.split import DEFAULT_SPLIT, Split, SplitByDays, split_frame

__all__ = [
    "DEFAULT_SPLIT",
    "ConvertReport",
    "Instance",
    "Prepared",
    "Split",
    "SplitByDays",
    "build_instances",
    "candidate_recall",
    "convert_online_retail",
    "covisitation",
    "prepare",
    "read_catalog",
    "read_interactions",
    "split_frame",
    "trending",
    "write_catalog",
    "write_interactions",
]
