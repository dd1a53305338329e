"""MLflow *models from code* entry: MLflow executes this file to build the pyfunc model."""

import mlflow

from prmforge.prm.pyfunc import PRMPyfunc

mlflow.models.set_model(PRMPyfunc())
