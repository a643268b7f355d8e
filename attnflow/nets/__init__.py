"""Networks inside the bijections of :mod:`attnflow.flows`: residual branches, coupling networks,
attention modules, conditioning encoders. They are only run forward, never inverted; a flow's
invertibility rests on its bijection (a contractive branch's on its certified Lipschitz bound).

=========================  ================================================  ==================================
file                       holds                                             paper
=========================  ================================================  ==================================
lipschitz_layers.py        SpectralNormConv2d, SpectralNormLinear,           spectral norm (Miyato et al.
                           LipSwish, CLipSwish                               2018); Residual Flows; i-DenseNet
operator_norm.py           gram_spectral_norm, certified_max_norm,           Gram iteration (Delattre et al.
                           circulant_norm_bound (certified, differentiable)  2023); Sedghi et al. 2019
branch_certificate.py      expansion_bound: a residual branch's certified    this library's (on circulant
                           bound tighter than the product of its layers'     spectra: Sedghi et al. 2019)
linearization.py           Linearization: output and explicit Jacobian       i-ResNet; Residual Flows
                           products for the residual log-det estimators
residual_branches.py       build_branch (i-ResNet, Residual Flow,            i-ResNet; Residual Flows;
                           i-DenseNet branches), DenseLayer, AttentionMix    i-DenseNet (Perugachi-Diaz et al.
                           (contractive attention mix)                       2021); ACF
lipschitz_attention.py     L2MultiheadSelfAttention, LipNormSelfAttention,   ACF (Mukherjee et al.); Kim et al.
                           DotProductSelfAttention (the ablation)            2021; Dasoulas et al. 2021
softmax_attention.py       softmax_attention (PyTorch's fused kernel or      Vaswani et al. 2017
                           explicit), SelfAttention2d (coupling networks)
nystrom_attention.py       NystromAttention                                  Nyströmformer (Xiong et al. 2021)
glow_coupling_net.py       conv_coupling_net, CouplingNetFactory, zero_conv  Glow (Kingma & Dhariwal 2018)
                           (zero-initialised last convolution)
flowpp_coupling_net.py     GatedAttentionNet (gated convolutions and         Flow++ (Ho et al. 2019)
                           self-attention, SelfAttention2d)
denseflow_coupling_net.py  DenseBlock, DenseFlowCouplingNet (dense block     DenseFlow (Grcić et al. 2021)
                           and Nyström attention), dense_net_factory
conv_lstm.py               ConvLSTMCell (the network of mARFlow's            Shi et al. 2015
                           autoregressive prior)
rrdb_encoder.py            RRDBEncoder (low-resolution encoder)              SRFlow (Lugmayr et al. 2020);
                                                                             ESRGAN
=========================  ================================================  ==================================
"""
from .conv_lstm import ConvLSTMCell
from .denseflow_coupling_net import DenseBlock, DenseFlowCouplingNet, dense_net_factory
from .flowpp_coupling_net import GatedAttentionNet
from .glow_coupling_net import CouplingNetFactory, conv_coupling_net
from .linearization import Linearization
from .lipschitz_attention import DotProductSelfAttention, L2MultiheadSelfAttention, LipNormSelfAttention
from .lipschitz_layers import CLipSwish, LipSwish, SpectralNormConv2d, SpectralNormLinear
from .nystrom_attention import NystromAttention
from .residual_branches import AttentionMix, build_branch
from .rrdb_encoder import RRDBEncoder
from .softmax_attention import SelfAttention2d

__all__ = [
    "AttentionMix",
    "CLipSwish",
    "ConvLSTMCell",
    "CouplingNetFactory",
    "DenseBlock",
    "DenseFlowCouplingNet",
    "DotProductSelfAttention",
    "GatedAttentionNet",
    "L2MultiheadSelfAttention",
    "Linearization",
    "LipNormSelfAttention",
    "LipSwish",
    "NystromAttention",
    "RRDBEncoder",
    "SelfAttention2d",
    "SpectralNormConv2d",
    "SpectralNormLinear",
    "build_branch",
    "conv_coupling_net",
    "dense_net_factory",
]
