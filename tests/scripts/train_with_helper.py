"""train_small.py after starting a helper process that would outlive it (a server, a worker):
its pid goes to $HELPER_PID_OUT, the script's own to $SCRIPT_PID_OUT."""

import os
import runpy
import subprocess
import sys
from pathlib import Path

helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
Path(os.environ["HELPER_PID_OUT"]).write_text(str(helper.pid))
Path(os.environ["SCRIPT_PID_OUT"]).write_text(str(os.getpid()))
runpy.run_path(str(Path(__file__).with_name("train_small.py")), run_name="__main__")
