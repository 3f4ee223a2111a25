"""Model builders of the reference pipelines.

Every builder returns an uncompiled ``keras.Model`` whose outputs are logits in
float32 (so a ``mixed_bfloat16``/``mixed_float16`` policy computes in low
precision but the softmax cross-entropy runs in float32).
"""

import keras

from tf_largebatch.layers import ChannelPadShortcut
from tf_largebatch.pipelines.resnet_depth import blocks_per_stage

RESNET50_VERSIONS = ("v1.5", "v1")


def resnet50(num_classes=1000, version="v1.5", image_size=224):
    """ResNet-50 with a logits head, random init (nothing downloaded).

    Args:
        num_classes: number of classes.
        version: ``"v1.5"`` (default): a bottleneck block that halves the
            resolution does it in its 3x3 convolution, the model MLPerf and the
            VRGD paper train, built by KerasHub's ``ResNetBackbone`` (needs
            ``keras-hub``); about 0.5% more accurate than v1 at a few percent
            more compute. ``"v1"``: ``keras.applications.ResNet50``, whose
            blocks halve the resolution in their first 1x1 convolution.
        image_size: input height and width.

    Both are 50 layers deep with 25.6 M parameters, a 7x7 stride-2 stem and a
    3x3 stride-2 max pooling, batch-norm momentum 0.9 (v1.5) or 0.99 (v1),
    global average pooling and a dense layer; the output is float32 logits.

    References:
        He et al., "Deep Residual Learning for Image Recognition", 2016;
        the MLPerf training ResNet-50 v1.5 benchmark model.
    """
    if version not in RESNET50_VERSIONS:
        raise ValueError(f"`version` must be one of {', '.join(RESNET50_VERSIONS)}. Received: version={version!r}")
    if version == "v1":
        base = keras.applications.ResNet50(
            weights=None, include_top=True, input_shape=(image_size, image_size, 3), classes=num_classes,
            classifier_activation=None,
        )
        inputs, features = base.input, base.output
    else:
        try:
            import keras_hub
        except ImportError as error:
            raise ImportError(f"ResNet-50 v1.5 is built by KerasHub ({error}): `pip install keras-hub`, "
                              "or set model.args.version: v1 for keras.applications' ResNet-50 v1") from None
        backbone = keras_hub.models.ResNetBackbone(
            input_conv_filters=[64],
            input_conv_kernel_sizes=[7],
            stackwise_num_filters=[64, 128, 256, 512],
            stackwise_num_blocks=[3, 4, 6, 3],
            stackwise_num_strides=[1, 2, 2, 2],
            block_type="bottleneck_block",
            use_pre_activation=False,
            image_shape=(image_size, image_size, 3),
        )
        inputs = keras.Input((image_size, image_size, 3), name="image")
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(backbone(inputs))
        features = keras.layers.Dense(num_classes, name="predictions")(x)
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(features)
    return keras.Model(inputs, logits, name="resnet50")


def resnet20(num_classes=10, depth=20, width=16, l2_regularization=0.0, image_size=32):
    """The CIFAR ResNet of He et al. (2016, §4.2): depth = 6n + 2.

    Three stages of ``n`` basic blocks with ``width``, ``2·width``, ``4·width``
    filters, option-A (zero-padding) shortcuts, global average pooling and a
    dense logits layer. ResNet-20 (n = 3, width 16) has 0.27 M parameters.

    Args:
        num_classes: number of classes.
        depth: 6n + 2 (20, 32, 44, 56, 110; 8 for smoke tests).
        width: filters of the first stage.
        l2_regularization: coefficient ``c`` of ``c·||W||²`` on conv/dense
            kernels (not on batch-norm or biases). The gradient adds ``2c·W``,
            so PyTorch's coupled ``weight_decay=λ`` is ``c = λ/2``. Use 0 with
            optimizers that apply their own weight decay.
        image_size: input height and width.

    References:
        He et al., "Deep Residual Learning for Image Recognition", 2016, §4.2;
        Zhao et al., SNGM, §7.1 (ResNet20 on CIFAR-10).
    """
    try:
        blocks = blocks_per_stage(depth)
    except ValueError as error:
        raise ValueError(f"`depth`: {error}") from None
    regularizer = keras.regularizers.L2(l2_regularization) if l2_regularization else None

    def conv(x, filters, stride, name):
        return keras.layers.Conv2D(
            filters, 3, strides=stride, padding="same", use_bias=False, kernel_initializer="he_normal",
            kernel_regularizer=regularizer, name=name,
        )(x)

    def bn(x, name):
        return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)(x)

    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.ReLU()(bn(conv(inputs, width, 1, "stem_conv"), "stem_bn"))
    filters = width
    for stage in range(3):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            out_filters = width * 2**stage
            name = f"stage{stage + 1}_block{block + 1}"
            y = keras.layers.ReLU()(bn(conv(x, out_filters, stride, name + "_conv1"), name + "_bn1"))
            y = bn(conv(y, out_filters, 1, name + "_conv2"), name + "_bn2")
            if stride != 1 or out_filters != filters:
                x = ChannelPadShortcut(stride, (out_filters - filters) // 2, name=name + "_shortcut")(x)
            x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
            filters = out_filters
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(num_classes, kernel_regularizer=regularizer, name="logits_dense")(x)
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=f"resnet{depth}")


def resnet56(num_classes=10, depth=56, width=16, l2_regularization=0.0, image_size=32):
    """ResNet-56, the CIFAR ResNet of He et al. (2016, §4.2) with 9 blocks per stage (0.85 M parameters).

    :func:`resnet20` with ``depth`` 56 by default; the arguments are the same.

    References:
        He et al., "Deep Residual Learning for Image Recognition", 2016, §4.2
        and Table 6; Jiang et al., VRGD, §7.1 (ResNet-56 on CIFAR-10).
    """
    return resnet20(num_classes=num_classes, depth=depth, width=width, l2_regularization=l2_regularization,
                    image_size=image_size)


def bert_pretrainer(
    vocabulary_size=30522,
    num_layers=24,
    num_heads=16,
    hidden_dim=1024,
    intermediate_dim=4096,
    dropout=0.1,
    max_sequence_length=512,
    seq_length=128,
    max_predictions_per_seq=20,
):
    """BERT with masked-LM and next-sentence heads, built from a config.

    KerasHub's ``BertBackbone`` (no preset, nothing downloaded) with
    ``max_sequence_length`` position embeddings — 512 from the start, so the
    phase-2 (sequence 512) model has the same weights as phase 1 (sequence
    128). The masked-LM head is KerasHub's ``MaskedLMHead`` tied to the token
    embedding; the next-sentence head is a dense layer on the pooled output.
    Defaults are BERT-large.

    Inputs (a dict): ``token_ids``, ``segment_ids``, ``padding_mask``
    (``[batch, seq_length]``) and ``mask_positions``
    (``[batch, max_predictions_per_seq]``). Outputs: ``{"mlm": [batch,
    max_predictions_per_seq, vocabulary_size], "nsp": [batch, 2]}`` logits.

    References:
        Devlin et al., "BERT", 2019, §3.1 (MLM, NSP) and Appendix A.2
        (sequence 128 for 90% of the steps, then 512).
    """
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim,
        dropout=dropout,
        max_sequence_length=max_sequence_length,
    )
    inputs = {
        "token_ids": keras.Input((None,), dtype="int32", name="token_ids"),
        "segment_ids": keras.Input((None,), dtype="int32", name="segment_ids"),
        "padding_mask": keras.Input((None,), dtype="int32", name="padding_mask"),
        "mask_positions": keras.Input((None,), dtype="int32", name="mask_positions"),
    }
    outputs = backbone(
        {"token_ids": inputs["token_ids"], "segment_ids": inputs["segment_ids"],
         "padding_mask": inputs["padding_mask"]}
    )
    mlm_head = keras_hub.layers.MaskedLMHead(
        vocabulary_size=vocabulary_size,
        token_embedding=backbone.token_embedding,
        intermediate_activation="gelu",
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        name="mlm_head",
    )
    mlm = mlm_head(outputs["sequence_output"], mask_positions=inputs["mask_positions"])
    nsp = keras.layers.Dense(
        2, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02), name="nsp_head"
    )(outputs["pooled_output"])
    mlm = keras.layers.Activation("linear", dtype="float32", name="mlm")(mlm)
    nsp = keras.layers.Activation("linear", dtype="float32", name="nsp")(nsp)
    return keras.Model(inputs, {"mlm": mlm, "nsp": nsp}, name="bert_pretrainer")

