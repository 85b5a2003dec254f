"""The preprocessing layer every backbone's model starts with: raw RGB 0..255 in, what
the backbone family was trained on out. Saved inside each ``.keras`` model, so a model
always takes raw pixels."""

from __future__ import annotations

import keras
from keras import ops

#: ImageNet channel statistics used by the "caffe" (BGR, 0..255) and "torch" (RGB, 0..1)
#: conventions, exactly as in ``keras.applications.imagenet_utils``.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
TORCH_RGB_MEAN = (0.485, 0.456, 0.406)
TORCH_RGB_STD = (0.229, 0.224, 0.225)

PREPROCESS_MODES = ("caffe", "tf", "torch", "lite", "none")


@keras.saving.register_keras_serializable(package="tlearn")
class Preprocess(keras.layers.Layer):
    """Map raw RGB pixels (floats 0..255) to what a backbone family was trained on.

    It is a layer, not a numpy function, so the saved ``.keras`` model carries its own
    preprocessing and always takes raw RGB: nobody serving it can forget or mix it up.

    Modes: ``caffe`` RGB->BGR minus the ImageNet BGR means (VGG, ResNet v1);
    ``tf`` x/127.5 - 1 (Inception, Xception, MobileNet v1/v2, ResNet v2, NASNet);
    ``torch`` x/255 then per-channel (x - mean)/std (DenseNet); ``lite`` (x - 127)/128
    (EfficientNet-Lite); ``none`` identity, for Keras models that preprocess inside
    (EfficientNet, EfficientNetV2, ConvNeXt, MobileNetV3).
    """

    def __init__(self, mode: str = "none", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}; "
                             f"expected one of {', '.join(PREPROCESS_MODES)}")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(CAFFE_BGR_MEAN, x.dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(TORCH_RGB_MEAN, x.dtype)
            std = ops.convert_to_tensor(TORCH_RGB_STD, x.dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "lite":
            return (x - 127.0) / 128.0
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}
