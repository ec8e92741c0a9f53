"""Placement: the latency cost model and optimizers. No torch (the edge imports this).

* :mod:`placement.costmodel` — per-cut latency prediction and choice (shared with the edge policy);
* :mod:`placement.mincut` — the DADS min-cut over all closed cuts of a DAG;
* :mod:`placement.fleet` — joint cut choice for many agents sharing one cloud (queueing-aware);
* :mod:`placement.profiles` — profile files and their conversion to ``CutProfile``;
* :mod:`placement.prior` — ``placement.yaml``, the edge agent's prior (``load_prior``);
* :mod:`placement.report` — tune's table and plot (matplotlib imported only when called).

Publishing a min-cut candidate as a new bundle version needs the partitioner (torch):
it lives in :mod:`partitioner.publish`.

Only numpy, pyyaml and the standard library are imported here.
"""

from placement.costmodel import (
    CloudEstimate,
    Constraints,
    CutProfile,
    Decision,
    Endpoint,
    EndpointDecision,
    LinkEstimate,
    Prediction,
    candidate_codecs,
    choose,
    choose_endpoint,
    predict,
)
from placement.fleet import (
    CloudCapacity,
    CloudLoad,
    FleetAgent,
    FleetPlan,
    FleetSpec,
    cloud_load,
    load_fleet_spec,
    optimize_fleet,
)
from placement.mincut import (
    Dag,
    DagConstraints,
    DagNode,
    DagPlan,
    brute_force_plan,
    chain_dag,
    evaluate_plan,
    min_cut_plan,
)
from placement.prior import (
    BandwidthRange,
    ModelPrior,
    PlacementPrior,
    PriorTable,
    bandwidth_ranges,
    build_model_prior,
    dump_prior,
    load_prior,
)
from placement.profiles import (
    CloudProfile,
    EdgeProfile,
    LinkProfile,
    cut_profiles,
    link_conditions,
    load_profile,
    machine_description,
    save_profile,
)
from placement.report import LinkRow, link_rows, plot_latency

__all__ = [
    "BandwidthRange",
    "CloudCapacity",
    "CloudEstimate",
    "CloudLoad",
    "CloudProfile",
    "Constraints",
    "CutProfile",
    "Dag",
    "DagConstraints",
    "DagNode",
    "DagPlan",
    "Decision",
    "EdgeProfile",
    "Endpoint",
    "EndpointDecision",
    "FleetAgent",
    "FleetPlan",
    "FleetSpec",
    "LinkEstimate",
    "LinkProfile",
    "LinkRow",
    "ModelPrior",
    "PlacementPrior",
    "Prediction",
    "PriorTable",
    "bandwidth_ranges",
    "brute_force_plan",
    "build_model_prior",
    "candidate_codecs",
    "chain_dag",
    "choose",
    "choose_endpoint",
    "cloud_load",
    "cut_profiles",
    "dump_prior",
    "evaluate_plan",
    "link_conditions",
    "link_rows",
    "load_fleet_spec",
    "load_prior",
    "load_profile",
    "machine_description",
    "min_cut_plan",
    "optimize_fleet",
    "plot_latency",
    "predict",
    "save_profile",
]
