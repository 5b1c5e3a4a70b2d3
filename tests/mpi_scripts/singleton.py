"""hvd.init() in a world of one process: refused when the launcher started several tasks."""

import torch

import hvd_dc as hvd
from common import parser, write_result

args = parser().parse_args()
hvd.init()
write_result(args.out, hvd.rank(), size=hvd.size())
hvd.shutdown()
