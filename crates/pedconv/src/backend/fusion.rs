//! [`PedConvBackend`] for `Fusion<B>`, burn's fusion over a CubeCL backend (what
//! `burn::backend::Wgpu` and `Cuda` are with burn's default features).
//!
//! The factorized path's columns formulation runs `B`'s kernels as custom operations of the
//! fusion stream (`OperationIr::Custom`, as burn-vision's operations do): fusion hands them
//! `B`'s tensors when the stream executes and takes back their outputs. Everything else takes
//! the default composition, whose element-wise operations (the attention's activations, the
//! optimizer step) fusion merges into kernels of its own.

use core::marker::PhantomData;

use burn::tensor::{Shape, Tensor};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

use super::{BackendClass, PedConvBackend};
use crate::attention::AttentionFactors;
use crate::paths::columns::{ColumnsForward, Sizes};
use crate::paths::{float_tensor, ConvLayout, Needed, OperandGradients, Operands};

impl<B: FusionBackend + PedConvBackend> PedConvBackend for Fusion<B> {
    fn class() -> BackendClass {
        B::class()
    }

    fn columns_forward(
        operands: &Operands<Self>,
        layout: &ConvLayout,
        keep: bool,
    ) -> ColumnsForward<Self> {
        let sizes = Sizes::new(operands, layout);
        let [ho, wo] = sizes.output_size;
        let x = operands.x.clone().into_primitive().tensor();
        let (client, dtype) = (x.client.clone(), x.dtype);
        let out = |shape: [usize; 4]| {
            TensorIr::uninit(client.create_empty_handle(), Shape::new(shape), dtype)
        };
        let mut outputs = vec![out([sizes.batch, sizes.channels_out, ho, wo])];
        if keep {
            // The CubeCL kernels keep `per_term` channels first.
            outputs.push(out([sizes.channels_out, sizes.terms(), ho, wo]));
        }
        let inputs = primitives(operands);
        let streams = OperationStreams::with_inputs(&inputs);
        let inputs: Vec<TensorIr> = inputs.into_iter().map(|tensor| tensor.into_ir()).collect();
        let description = CustomOpIr::new("pedconv_columns_forward", &inputs, &outputs);
        let operation = ColumnsForwardOp::<B> {
            description: description.clone(),
            layout: *layout,
            _backend: PhantomData,
        };
        let mut results = client
            .register(streams, OperationIr::Custom(description), operation)
            .into_iter()
            .map(float_tensor);
        ColumnsForward {
            output: results.next().expect("the output"),
            per_term: results.next(),
        }
    }

    fn columns_backward(
        operands: Operands<Self>,
        per_term: Option<Tensor<Self, 4>>,
        layout: &ConvLayout,
        grad: Tensor<Self, 4>,
        needed: Needed,
    ) -> OperandGradients<Self> {
        let mut inputs = primitives(&operands);
        let (client, dtype) = (inputs[0].client.clone(), inputs[0].dtype);
        let outputs: Vec<TensorIr> = inputs
            .iter()
            .map(|operand| {
                TensorIr::uninit(client.create_empty_handle(), operand.shape.clone(), dtype)
            })
            .collect();
        inputs.push(grad.into_primitive().tensor());
        if let Some(per_term) = per_term {
            inputs.push(per_term.into_primitive().tensor());
        }
        let streams = OperationStreams::with_inputs(&inputs);
        let inputs: Vec<TensorIr> = inputs.into_iter().map(|tensor| tensor.into_ir()).collect();
        let description = CustomOpIr::new("pedconv_columns_backward", &inputs, &outputs);
        let operation = ColumnsBackwardOp::<B> {
            description: description.clone(),
            layout: *layout,
            needed,
            _backend: PhantomData,
        };
        let results = client.register(streams, OperationIr::Custom(description), operation);
        let [x, input, output, kernel, weight] =
            <[_; 5]>::try_from(results).expect("five gradients");
        let factor = |gradient| {
            let gradient: Tensor<Self, 4> = float_tensor(gradient);
            let [batch, rank, entries, _] = gradient.dims();
            gradient.reshape([batch, rank, entries])
        };
        OperandGradients {
            x: float_tensor(x),
            input: factor(input),
            output: factor(output),
            kernel: factor(kernel),
            weight: float_tensor(weight),
        }
    }
}

/// The operands' primitives in the order the operations read them: x, a_in, a_out, a_k, W.
fn primitives<B: FusionBackend>(
    operands: &Operands<Fusion<B>>,
) -> Vec<burn_fusion::FusionTensor<B::FusionRuntime>> {
    let factors = &operands.factors;
    [
        operands.x.clone(),
        factors.input.clone().reshape::<4, _>(dims4(&factors.input)),
        factors
            .output
            .clone()
            .reshape::<4, _>(dims4(&factors.output)),
        factors
            .kernel
            .clone()
            .reshape::<4, _>(dims4(&factors.kernel)),
        operands.weight.clone(),
    ]
    .into_iter()
    .map(|tensor| tensor.into_primitive().tensor())
    .collect()
}

/// A factor's `[B, r, n]` as `[B, r, n, 1]`, so that every operand is four-dimensional.
fn dims4<B: burn::tensor::backend::Backend>(factor: &Tensor<B, 3>) -> [usize; 4] {
    let [batch, rank, entries] = factor.dims();
    [batch, rank, entries, 1]
}

/// The operands on `B` when the stream executes.
fn operands_on<B: FusionBackend>(
    inputs: &[TensorIr],
    handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
) -> Operands<B> {
    let mut get = |at: usize| float_tensor::<B, 4>(handles.get_float_tensor::<B>(&inputs[at]));
    let factor = |tensor: Tensor<B, 4>| {
        let [batch, rank, entries, _] = tensor.dims();
        tensor.reshape([batch, rank, entries])
    };
    Operands {
        x: get(0),
        factors: AttentionFactors {
            input: factor(get(1)),
            output: factor(get(2)),
            kernel: factor(get(3)),
        },
        weight: get(4),
    }
}

#[derive(Debug)]
struct ColumnsForwardOp<B> {
    description: CustomOpIr,
    layout: ConvLayout,
    _backend: PhantomData<B>,
}

impl<B: FusionBackend + PedConvBackend> Operation<B::FusionRuntime> for ColumnsForwardOp<B> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
    ) {
        let description = &self.description;
        let operands = operands_on::<B>(&description.inputs, handles);
        let keep = description.outputs.len() == 2;
        let forward = B::columns_forward(&operands, &self.layout, keep);
        let register = |handles: &mut HandleContainer<_>, at: usize, tensor: Tensor<B, 4>| {
            handles.register_float_tensor::<B>(
                &description.outputs[at].id,
                tensor.into_primitive().tensor(),
            )
        };
        register(handles, 0, forward.output);
        if let Some(per_term) = forward.per_term {
            register(handles, 1, per_term);
        }
    }
}

#[derive(Debug)]
struct ColumnsBackwardOp<B> {
    description: CustomOpIr,
    layout: ConvLayout,
    needed: Needed,
    _backend: PhantomData<B>,
}

impl<B: FusionBackend + PedConvBackend> Operation<B::FusionRuntime> for ColumnsBackwardOp<B> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
    ) {
        let description = &self.description;
        let inputs = &description.inputs;
        let operands = operands_on::<B>(inputs, handles);
        let grad = float_tensor(handles.get_float_tensor::<B>(&inputs[5]));
        let per_term = inputs
            .get(6)
            .map(|per_term| float_tensor(handles.get_float_tensor::<B>(per_term)));
        let gradients = B::columns_backward(operands, per_term, &self.layout, grad, self.needed);
        let [input, output, kernel] = [gradients.input, gradients.output, gradients.kernel]
            .map(|factor| factor.unsqueeze_dim::<4>(3));
        let parts = [gradients.x, input, output, kernel, gradients.weight];
        for (tensor, at) in parts.into_iter().zip(&description.outputs) {
            handles.register_float_tensor::<B>(&at.id, tensor.into_primitive().tensor());
        }
    }
}
