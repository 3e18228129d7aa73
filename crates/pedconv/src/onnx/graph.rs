//! An ONNX graph under construction: one helper per operator kind the exporter writes, weights as
//! float32 initializers, and the graph's typed inputs and outputs.
//!
//! Values are named by strings, as in ONNX: every helper takes the name of the value it defines
//! (which also names the node) and returns it, so calls chain.

use std::collections::HashSet;

use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::proto::attribute_proto::AttributeType;
use super::proto::tensor_proto::DataType;
use super::proto::tensor_shape_proto::{dimension, Dimension};
use super::proto::{
    type_proto, AttributeProto, GraphProto, NodeProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

/// The sliding window of a convolution or a pooling.
pub(super) struct Window<'a> {
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    /// `[sh, sw]`.
    pub stride: [usize; 2],
    /// `[dh, dw]`.
    pub dilation: [usize; 2],
    /// burn's padding configuration.
    pub padding: &'a PaddingConfig2d,
}

/// One dimension of a graph input or output: a number, or a symbol that the runtime binds (`N`).
pub(super) enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A named, dynamic size.
    Symbolic(&'static str),
}

/// Nodes and initializers in the order they are added (ONNX wants the nodes topologically
/// sorted, which building them from the input forward gives).
#[derive(Default)]
pub(super) struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// Every value defined so far: initializers and node outputs.
    names: HashSet<String>,
}

impl Graph {
    /// `Conv`: `weight` is `[out, in/group, kh, kw]`, `bias` (optional) `[out]`.
    pub fn conv(
        &mut self,
        output: &str,
        x: &str,
        weight: &str,
        bias: Option<&str>,
        window: &Window,
        group: usize,
    ) -> String {
        let attributes = vec![
            ints("kernel_shape", &window.kernel),
            ints("strides", &window.stride),
            ints("dilations", &window.dilation),
            int("group", group as i64),
            padding(window.padding),
        ];
        let inputs: Vec<&str> = [x, weight].into_iter().chain(bias).collect();
        self.node("Conv", output, &inputs, attributes)
    }

    /// `BatchNormalization` in inference form: `scale · (x − mean) / sqrt(var + epsilon) + bias`
    /// per channel, all four parameters `[C]`.
    pub fn batch_norm(
        &mut self,
        output: &str,
        x: &str,
        parameters: [&str; 4],
        epsilon: f64,
    ) -> String {
        let [scale, bias, mean, var] = parameters;
        self.node(
            "BatchNormalization",
            output,
            &[x, scale, bias, mean, var],
            vec![float("epsilon", epsilon as f32)],
        )
    }

    /// `Gemm` of `x` `[N, in]` by `weight` `[in, out]` (burn's `Linear` layout, so not
    /// transposed), plus `bias` `[out]` when given.
    pub fn gemm(&mut self, output: &str, x: &str, weight: &str, bias: Option<&str>) -> String {
        let inputs: Vec<&str> = [x, weight].into_iter().chain(bias).collect();
        self.node("Gemm", output, &inputs, Vec::new())
    }

    /// `Relu`.
    pub fn relu(&mut self, output: &str, x: &str) -> String {
        self.node("Relu", output, &[x], Vec::new())
    }

    /// `Sigmoid`.
    pub fn sigmoid(&mut self, output: &str, x: &str) -> String {
        self.node("Sigmoid", output, &[x], Vec::new())
    }

    /// `Mul`, element-wise with NumPy broadcasting.
    pub fn mul(&mut self, output: &str, a: &str, b: &str) -> String {
        self.node("Mul", output, &[a, b], Vec::new())
    }

    /// `Add`, element-wise with NumPy broadcasting.
    pub fn add(&mut self, output: &str, a: &str, b: &str) -> String {
        self.node("Add", output, &[a, b], Vec::new())
    }

    /// `Reshape` to `shape`, where `0` keeps the input's size (the dynamic batch) and `-1` takes
    /// what remains; the shape is an int64 initializer shared by every reshape to it.
    pub fn reshape(&mut self, output: &str, x: &str, shape: &[i64]) -> String {
        let name = format!("shape{shape:?}").replace(' ', "");
        if self.names.insert(name.clone()) {
            self.initializers.push(TensorProto {
                name: Some(name.clone()),
                dims: vec![shape.len() as i64],
                data_type: Some(DataType::Int64 as i32),
                int64_data: shape.to_vec(),
                ..Default::default()
            });
        }
        self.node("Reshape", output, &[x, &name], Vec::new())
    }

    /// `Flatten` to `[N, everything else]`.
    pub fn flatten(&mut self, output: &str, x: &str) -> String {
        self.node("Flatten", output, &[x], vec![int("axis", 1)])
    }

    /// `GlobalAveragePool`: `[N, C, H, W]` to `[N, C, 1, 1]`.
    pub fn global_average_pool(&mut self, output: &str, x: &str) -> String {
        self.node("GlobalAveragePool", output, &[x], Vec::new())
    }

    /// `MaxPool` (padding never wins the maximum, as in burn).
    pub fn max_pool(&mut self, output: &str, x: &str, window: &Window, ceil_mode: bool) -> String {
        let attributes = vec![
            ints("kernel_shape", &window.kernel),
            ints("strides", &window.stride),
            ints("dilations", &window.dilation),
            int("ceil_mode", ceil_mode.into()),
            padding(window.padding),
        ];
        self.node("MaxPool", output, &[x], attributes)
    }

    /// `AveragePool`. Opset 17's has no dilation: the window's must be 1.
    pub fn average_pool(
        &mut self,
        output: &str,
        x: &str,
        window: &Window,
        ceil_mode: bool,
        count_include_pad: bool,
    ) -> String {
        debug_assert_eq!(window.dilation, [1, 1]);
        let attributes = vec![
            ints("kernel_shape", &window.kernel),
            ints("strides", &window.stride),
            int("ceil_mode", ceil_mode.into()),
            int("count_include_pad", count_include_pad.into()),
            padding(window.padding),
        ];
        self.node("AveragePool", output, &[x], attributes)
    }

    /// A float32 initializer holding `tensor` (of any float dtype), reshaped to `dims` when
    /// given (same element order).
    pub fn weight<B: Backend, const D: usize>(
        &mut self,
        name: &str,
        tensor: Tensor<B, D>,
        dims: Option<&[usize]>,
    ) -> String {
        let shape = tensor.dims();
        let values: Vec<f32> = tensor.into_data().iter::<f32>().collect();
        self.constant(name, dims.unwrap_or(&shape), &values)
    }

    /// A float32 initializer of the given values (row-major), stored as little-endian raw data.
    pub fn constant(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), values.len(), "{name}");
        self.define(name);
        self.initializers.push(TensorProto {
            name: Some(name.to_string()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(DataType::Float as i32),
            raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..Default::default()
        });
        name.to_string()
    }

    /// Records a new value.
    ///
    /// # Panics
    /// When `name` is already defined: the exporter names every value once.
    fn define(&mut self, name: &str) {
        assert!(
            self.names.insert(name.to_string()),
            "the ONNX value {name} is defined twice"
        );
    }

    /// Whether a value of this name exists.
    pub fn has(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// The finished graph, with float32 inputs and outputs of the given shapes.
    pub fn finish(
        self,
        name: &str,
        inputs: &[(&str, &[Dim])],
        outputs: &[(&str, &[Dim])],
    ) -> GraphProto {
        let values = |list: &[(&str, &[Dim])]| list.iter().map(|(n, d)| value_info(n, d)).collect();
        GraphProto {
            name: Some(name.to_string()),
            node: self.nodes,
            initializer: self.initializers,
            input: values(inputs),
            output: values(outputs),
            ..Default::default()
        }
    }

    /// Adds a node of `op` that defines `output` (and is named after it).
    fn node(
        &mut self,
        op: &str,
        output: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> String {
        self.define(output);
        self.nodes.push(NodeProto {
            name: Some(output.to_string()),
            op_type: Some(op.to_string()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            attribute: attributes,
            ..Default::default()
        });
        output.to_string()
    }
}

/// burn's padding as ONNX's `pads` (`[top, left, bottom, right]`), or `auto_pad = SAME_UPPER`
/// for `Same` (which puts an odd total padding's extra row or column at the end, as burn does).
fn padding(padding: &PaddingConfig2d) -> AttributeProto {
    match *padding {
        PaddingConfig2d::Valid => ints("pads", &[0; 4]),
        PaddingConfig2d::Explicit(top, left, bottom, right) => {
            ints("pads", &[top, left, bottom, right])
        }
        PaddingConfig2d::Same => AttributeProto {
            name: Some("auto_pad".into()),
            r#type: Some(AttributeType::String as i32),
            s: Some(b"SAME_UPPER".to_vec()),
            ..Default::default()
        },
    }
}

/// An `INTS` attribute.
fn ints(name: &str, values: &[usize]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: values.iter().map(|&v| v as i64).collect(),
        ..Default::default()
    }
}

/// An `INT` attribute.
fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    }
}

/// A `FLOAT` attribute.
fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(value),
        ..Default::default()
    }
}

/// A float32 tensor value of the given dimensions, for the graph's inputs and outputs.
fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(size) => dimension::Value::DimValue(*size as i64),
                Dim::Symbolic(symbol) => dimension::Value::DimParam(symbol.to_string()),
            }),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}
