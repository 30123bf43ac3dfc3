//! Device and dtype names as they appear in pipeline configs.

use tch::{Device, Kind};

use crate::{KernelError, Result};

/// Parses `"cpu"`, `"cuda"` (device 0) or `"cuda:N"`, checking that CUDA device N exists.
pub fn parse_device(name: &str) -> Result<Device> {
    let unknown = || KernelError::UnknownName {
        what: "device",
        name: name.to_owned(),
        expected: "\"cpu\", \"cuda\" or \"cuda:N\"",
    };
    let device = match name {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => {
            let index = other.strip_prefix("cuda:").ok_or_else(unknown)?;
            index.parse::<usize>().map_err(|_| unknown())?
        }
    };
    let count = tch::Cuda::device_count();
    if i64::try_from(device).map_or(true, |d| d >= count) {
        return Err(KernelError::DeviceUnavailable(name.to_owned(), count));
    }
    Ok(Device::Cuda(device))
}

/// Floating-point precision a model runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DType {
    /// 32-bit float (the only one exact to the references on CPU).
    #[default]
    F32,
    /// 16-bit brain float (GPU).
    Bf16,
    /// 16-bit IEEE float (GPU).
    F16,
}

impl DType {
    /// Parses `"f32"`, `"bf16"` or `"f16"`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            "f16" => Ok(Self::F16),
            _ => Err(KernelError::UnknownName {
                what: "dtype",
                name: name.to_owned(),
                expected: "\"f32\", \"bf16\" or \"f16\"",
            }),
        }
    }

    /// The tch kind of this dtype.
    pub fn kind(self) -> Kind {
        match self {
            Self::F32 => Kind::Float,
            Self::Bf16 => Kind::BFloat16,
            Self::F16 => Kind::Half,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(matches!(parse_device("gpu"), Err(KernelError::UnknownName { .. })));
        assert!(matches!(parse_device("cuda:x"), Err(KernelError::UnknownName { .. })));
        if tch::Cuda::device_count() == 0 {
            assert!(matches!(parse_device("cuda:0"), Err(KernelError::DeviceUnavailable(..))));
        }
        assert_eq!(DType::parse("bf16").unwrap().kind(), Kind::BFloat16);
        assert!(DType::parse("f64").is_err());
    }
}
