"""MLflow models-from-code definition of the generator (logged as code, never pickled).

MLflow executes this file when it loads the model; it is not imported by the package. The
checkpoint travels as the model artifact ``checkpoint`` and is loaded with ``weights_only=True``.

``predict`` takes a DataFrame with columns ``n`` and ``seed`` (one row per request, optional
``temperature``) and returns one row per generated candidate: ``request``, ``id``, ``structure``
(CIF or SMILES text), validity flags and scores.
"""

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class GeneratorModel(PythonModel):
    def load_context(self, context):
        from design.api import Generator

        self.generator = Generator.from_checkpoint(context.artifacts["checkpoint"])

    def predict(self, context, model_input: pd.DataFrame, params=None):
        from design.generation.tables import to_table

        frames = []
        for i, row in enumerate(model_input.to_dict("records")):
            temperature = row.get("temperature")
            cands = self.generator.generate(
                int(row["n"]), seed=int(row.get("seed", 0)), temperature=None if pd.isna(temperature) else temperature
            )
            frames.append(to_table(cands, self.generator.domain).assign(request=i))
        return pd.concat(frames, ignore_index=True)


mlflow.models.set_model(GeneratorModel())
