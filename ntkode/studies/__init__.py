"""The studies behind the `ntkode` command line: each runs the numerics of `ntkode` on a
reference problem and writes a table, figures and a machine-readable `results.json`.

Plotting (matplotlib), scikit-learn's data sets and progress bars are used here only; install
them with `pip install "ntkode[studies]"`.
"""

from ._closure._metrics import iou as iou, iou_per_image as iou_per_image
from ._closure._optimisers import Adam as Adam, Ranger as Ranger
from ._closure._saved import (
    ClosureNetwork as ClosureNetwork,
    load_closure_network as load_closure_network,
    save_closure_network as save_closure_network,
)
from ._closure._study import closure_study as closure_study
from ._closure._unet import UNet as UNet
from ._compare._classification import classification_study as classification_study
from ._compare._study import compare_study as compare_study
from ._control._study import control_study as control_study
from ._floor._study import floor_study as floor_study
from ._mkl._study import mkl_compare as mkl_compare, mkl_study as mkl_study
from ._problems import (
    DigitsCNN as DigitsCNN,
    SoftplusBeta as SoftplusBeta,
    digits_data as digits_data,
    digits_problem as digits_problem,
    sine_problem as sine_problem,
)
from ._transfer import transfer_study as transfer_study
from ._widths._study import width_run as width_run, width_study as width_study
