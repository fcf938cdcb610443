"""The preprocessing Pipeline: impute, log1p, one-hot, VectorAssembler, StandardScaler.

All of it is Spark ML stages, so the fitted preparation is saved inside the run's PipelineModel and
scoring new customers applies exactly the same steps. ``prepare`` fits it on the sweep's customers
(all usable customers, or a uniform sample of ``model.sample_size``) and hands the sweep their scaled
features as a matrix.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
import pyspark.sql.functions as F
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import (
    Imputer,
    OneHotEncoder,
    SQLTransformer,
    StandardScaler,
    StringIndexer,
    VectorAssembler,
)
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame

from segspark.config import ClipSettings, Settings
from segspark.metrics import FEATURES
from segspark.validate import FeatureSpec, col, quoted

RAW_FEATURES = "features_unscaled"
PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PERCENTILE_ACCURACY = 10_000  # of the clip quantiles: Spark's default, relative rank error 1/10000

Bounds = dict[str, tuple[float, float]]  # numeric feature -> (lower, upper) clip values, original units


def internal_name(column: str) -> str:
    """The name a feature goes by inside the Pipeline.

    Spark ML stages (Imputer, StringIndexer) look their input columns up unquoted, so ``spend.score``
    would be read as field ``score`` of a struct ``spend``. A name that is not plain is copied to a
    plain one first: its letters and digits, and a digest of the whole name so two names never meet.

    >>> internal_name("income"), internal_name("spend.score"), internal_name("Ausgaben €")
    ('income', 'spend_score__dbd3933a', 'Ausgaben__742a2709')
    """
    if PLAIN_NAME.fullmatch(column):
        return column
    stem = re.sub(r"[^A-Za-z0-9_]+", "_", column).strip("_") or "column"
    return f"{stem}__{hashlib.sha1(column.encode('utf-8')).hexdigest()[:8]}"


def imputed(column: str) -> str:
    return f"{internal_name(column)}__imputed"


def clipped(column: str) -> str:
    return f"{internal_name(column)}__clipped"


def model_input(column: str, spec: FeatureSpec, clip: Bounds | None = None) -> str:
    """The column that enters the assembler for a numeric feature: imputed, clipped if asked, then
    log1p if asked."""
    if column in spec.log:
        return f"{internal_name(column)}__log1p"
    return clipped(column) if clip else imputed(column)


def clip_bounds(df: DataFrame, spec: FeatureSpec, settings: ClipSettings | None) -> Bounds:
    """Each numeric feature's ``settings.lower`` and ``upper`` quantiles over ``df`` (NULLs left out),
    in original units: one aggregation. Empty without ``settings``, or without numeric features."""
    if settings is None or not spec.numeric:
        return {}
    quantiles = [settings.lower, settings.upper]

    def known(column: str):  # NaN counts as missing, as for the Imputer
        value = col(column).cast("double")
        return F.when(~F.isnan(value), value)

    row = df.agg(
        *[
            F.percentile_approx(known(c), quantiles, PERCENTILE_ACCURACY).alias(str(i))
            for i, c in enumerate(spec.numeric)
        ]
    ).first()
    values = {c: row[str(i)] for i, c in enumerate(spec.numeric)}
    return {c: (float(v[0]), float(v[1])) for c, v in values.items() if v and None not in v}


def clip_stage(spec: FeatureSpec, bounds: Bounds) -> SQLTransformer:
    """Clip each imputed numeric feature to its bounds; the bounds are literals of the statement, so the
    saved model applies the same ones when it scores new customers."""

    def clip(column: str) -> str:
        if column not in bounds:  # no value to take quantiles of: nothing to clip
            return f"{imputed(column)} AS {clipped(column)}"
        lower, upper = bounds[column]
        return f"LEAST(GREATEST({imputed(column)}, {lower!r}D), {upper!r}D) AS {clipped(column)}"

    clips = ", ".join(clip(c) for c in spec.numeric)
    return SQLTransformer(statement=f"SELECT *, {clips} FROM __THIS__")


def build_pipeline(spec: FeatureSpec, clip: Bounds | None = None) -> Pipeline:
    """The preparation stages; ``clip``: bounds per numeric feature (from ``clip_bounds``), or none."""
    stages = []
    renamed = [c for c in spec.columns if internal_name(c) != c]
    if renamed:
        copies = ", ".join(f"{quoted(c)} AS {internal_name(c)}" for c in renamed)
        stages.append(SQLTransformer(statement=f"SELECT *, {copies} FROM __THIS__"))
    if spec.numeric:
        # Median, not mean: spend and counts are skewed and the mean is pulled by a few big customers.
        stages.append(
            Imputer(
                strategy="median",
                inputCols=[internal_name(c) for c in spec.numeric],
                outputCols=[imputed(c) for c in spec.numeric],
            )
        )
    if clip:
        stages.append(clip_stage(spec, clip))
    if spec.log:
        source = clipped if clip else imputed
        logs = ", ".join(f"LOG1P({source(c)}) AS {model_input(c, spec, clip)}" for c in spec.log)
        stages.append(SQLTransformer(statement=f"SELECT *, {logs} FROM __THIS__"))
    vectors = []
    if spec.categorical:
        indexed = [f"{internal_name(c)}__index" for c in spec.categorical]
        vectors = [f"{internal_name(c)}__onehot" for c in spec.categorical]
        # "keep" gives unseen values (and NULL) a bucket of their own instead of failing at scoring time;
        # no category is dropped, so every value is equally far from the others.
        stages.append(
            StringIndexer(
                inputCols=[internal_name(c) for c in spec.categorical],
                outputCols=indexed,
                handleInvalid="keep",
                stringOrderType="alphabetAsc",
            )
        )
        stages.append(OneHotEncoder(inputCols=indexed, outputCols=vectors, dropLast=False))
    stages.append(
        VectorAssembler(
            inputCols=[model_input(c, spec, clip) for c in spec.numeric] + vectors, outputCol=RAW_FEATURES
        )
    )
    stages.append(StandardScaler(inputCol=RAW_FEATURES, outputCol=FEATURES, withMean=True, withStd=True))
    return Pipeline(stages=stages)


def scaler_of(model: PipelineModel):
    """The fitted StandardScalerModel of a preparation (or full) PipelineModel."""
    return next(stage for stage in model.stages if type(stage).__name__ == "StandardScalerModel")


def vector_columns(preparation: PipelineModel, spec: FeatureSpec) -> list[str]:
    """A name for each position of the feature vector: numeric features, then ``column=value`` per
    category (alphabetical) and ``column=(other)`` for the bucket of missing and unseen values."""
    names = list(spec.numeric)
    indexers = [stage for stage in preparation.stages if type(stage).__name__ == "StringIndexerModel"]
    if indexers:
        for column, labels in zip(spec.categorical, indexers[0].labelsArray, strict=True):
            names += [f"{column}={label}" for label in labels] + [f"{column}=(other)"]
    return names


@dataclass
class Prepared:
    """The fitted preparation and the customers the sweep chooses k on."""

    preparation: PipelineModel
    bounds: Bounds
    points: np.ndarray  # the sweep's customers x scaled features
    population: int  # usable customers the points were drawn from

    @property
    def sampled(self) -> bool:
        return len(self.points) < self.population


def prepare(valid: DataFrame, rows: int, spec: FeatureSpec, settings: Settings) -> Prepared:
    """Fit the preparation (clip bounds, medians, categories, scaler) on the sweep's customers and
    collect their scaled features: all ``rows`` usable customers, or, with more than
    ``model.sample_size`` (0: no limit), a uniform sample of about that many. Either way the work here
    and in the sweep costs the same at any table size; the sample is cached for its few passes."""
    size = settings.model.sample_size
    sampled = bool(size) and rows > size
    sample = valid.sample(fraction=size / rows, seed=settings.model.seed).persist() if sampled else valid
    try:
        bounds = clip_bounds(sample, spec, settings.features.clip)
        preparation = build_pipeline(spec, bounds).fit(sample)
        vectors = preparation.transform(sample).select(vector_to_array(F.col(FEATURES)).alias("x"))
        x = vectors.toPandas()["x"]
        points = np.stack(x.to_numpy()) if len(x) else np.empty((0, 1))
    finally:
        if sampled:
            sample.unpersist()
    return Prepared(preparation, bounds, points, rows)
