"""Deploy a ticket: the slim network it buys at inference, checked equal to the masked dense network,
measured (params, MACs, memory, latency) and exported (``torch.export``, ONNX). See docs/deploy.md."""

from sparseticket.deploy.check import TOLERANCE, DeployMismatch, scaled_error
from sparseticket.deploy.deploy import BATCH_SIZES, DeployResult, deploy
from sparseticket.deploy.export import ExportReport, export_onnx, export_program
from sparseticket.deploy.formats import LayerFormat, choose_linear_formats
from sparseticket.deploy.measure import Measures
from sparseticket.deploy.report import DeployReport
from sparseticket.deploy.run_folder import RunSource, check_run_folder, load_run
from sparseticket.deploy.sparse_linear import SparseLinear

__all__ = ["BATCH_SIZES", "TOLERANCE", "DeployMismatch", "DeployReport", "DeployResult", "ExportReport",
           "LayerFormat", "Measures", "RunSource", "SparseLinear", "check_run_folder", "choose_linear_formats",
           "deploy", "export_onnx", "export_program", "load_run", "scaled_error"]
