#!/usr/bin/env python3
"""Trains a transducer (icefall-style flags). Example:

  local/train.py --train-cuts data/fbank/fsdd_cuts_train.jsonl.gz --dev-cuts data/fbank/fsdd_cuts_dev.jsonl.gz \\
      --bpe-model data/lang_bpe_32/bpe.model --model-config conf/model.yaml --exp-dir exp/fp32 --num-epochs 10
"""

import argparse
import dataclasses
import logging
from pathlib import Path

import yaml

from nnaqat import registry
from nnaqat.models.transducer import TransducerConfig
from nnaqat.quant import QuantConfig
from nnaqat.trainer import TrainConfig, train


def str2bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fields = [f for f in dataclasses.fields(TrainConfig) if f.name not in ("model", "quant")]
    for f in fields + list(dataclasses.fields(QuantConfig)):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        kind = {bool: str2bool}.get(type(default), type(default))
        required = default is dataclasses.MISSING
        choices = registry.names("quantizer") if f.name == "quantizer" else None
        parser.add_argument(flag, type=str if required else kind, default=None if required else default,
                            required=required, choices=choices)
    parser.add_argument("--model-config", type=Path, help="YAML with TransducerConfig fields (not vocab_size)")
    parser.add_argument("--encoder", choices=registry.names("encoder"), help="overrides the model config")
    parser.add_argument("--predictor", choices=registry.names("predictor"), help="overrides the model config")
    parser.add_argument("--joiner", choices=registry.names("joiner"), help="overrides the model config")
    return parser


def main() -> None:
    args = vars(get_parser().parse_args())
    model = yaml.safe_load(args.pop("model_config").read_text()) if args.get("model_config") else {}
    args.pop("model_config", None)
    defaults = {f.name: f.default for f in dataclasses.fields(TransducerConfig)}
    for kind in ("encoder", "predictor", "joiner"):
        name = args.pop(kind)
        if name and name != model.get(kind, defaults[kind]):
            model[kind] = name
            model.pop(f"{kind}_kwargs", None)  # they were the replaced variant's arguments
    quant = QuantConfig(**{f.name: args.pop(f.name) for f in dataclasses.fields(QuantConfig)})
    train(TrainConfig(model=model, quant=quant, **args))


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    main()
