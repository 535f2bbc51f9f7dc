//! The loader streams: it reads the header, then each tensor exactly once with a read of that
//! tensor's size, in file order, never the whole file.

mod common;

use std::cell::RefCell;

use burn::tensor::Device;
use common::*;
use pseudoword::error::WeightsError;
use pseudoword::loader::load_component;
use pseudoword::models::CLIPTextModel;
use pseudoword::weights::{ByteSource, FileSource, SafetensorsHeader};

struct Recording {
    inner: FileSource,
    reads: RefCell<Vec<(u64, usize)>>,
}

impl ByteSource for Recording {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, WeightsError> {
        self.reads.borrow_mut().push((offset, len));
        self.inner.read(offset, len).await
    }
}

#[test]
fn weights_are_read_tensor_by_tensor_in_file_order() {
    let dir = tiny_sd1().join("text_encoder");
    let source = Recording { inner: FileSource::open(&dir.join("model.safetensors")).unwrap(), reads: RefCell::new(vec![]) };
    let header = pollster::block_on(SafetensorsHeader::read(&source)).unwrap();
    source.reads.borrow_mut().clear();
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let mut seen = 0;
    pollster::block_on(load_component::<CLIPTextModel, _>(&config, "config.json", &source, &Device::flex(), pseudoword::weights::WeightStorage::F32, &mut |done, total, _| {
        seen = done;
        assert!(done <= total);
        true
    }))
    .unwrap();
    let reads = source.reads.borrow();
    // header: 8-byte length + JSON, then one read per tensor
    assert_eq!(reads.len(), 2 + header.tensors.len());
    assert_eq!(seen, header.tensors.len());
    let mut tensor_reads: Vec<(u64, usize)> = reads[2..].to_vec();
    let mut expected: Vec<(u64, usize)> = header.tensors.values().map(|e| (e.start, e.len as usize)).collect();
    expected.sort();
    assert_eq!(tensor_reads, expected, "each tensor read once, by its own byte range, in file order");
    tensor_reads.sort_by_key(|r| r.1);
    let largest = tensor_reads.last().unwrap().1 as u64;
    assert!(largest < source.len(), "no read covers the whole file");
}
