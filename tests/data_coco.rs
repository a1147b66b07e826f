//! COCO-format reader tests on a hand-made fixture written into a temp dir: every messy-data rule
//! and every bad-data case of `gshn::data::coco`.

use std::path::{Path, PathBuf};

use gshn::data::coco::{CrowdPolicy, SplitPathsOverride};
use gshn::data::features::FeatureConfig;
use gshn::data::graph::graph_from_sample;
use gshn::data::{DataError, Dataset, GraphConfig, LoadOptions, SplitPaths};
use image::{ImageBuffer, Luma, Rgb, RgbImage};
use serde_json::{json, Value};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gshn-coco-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_ids(path: &Path, w: u32, h: u32, ids: &[u32]) {
    assert_eq!(ids.len(), (w * h) as usize);
    let img = RgbImage::from_fn(w, h, |x, y| {
        let id = ids[(y * w + x) as usize];
        Rgb([id as u8, (id >> 8) as u8, (id >> 16) as u8])
    });
    img.save(path).unwrap();
}

fn write_rgb(path: &Path, w: u32, h: u32) {
    RgbImage::from_fn(w, h, |x, y| Rgb([(x * 40) as u8, (y * 60) as u8, 90]))
        .save(path)
        .unwrap();
}

fn write_grey_jpeg(path: &Path, w: u32, h: u32) {
    let img: ImageBuffer<Luma<u8>, Vec<u8>> =
        ImageBuffer::from_fn(w, h, |x, y| Luma([(x * 30 + y * 3) as u8]));
    img.save_with_format(path, image::ImageFormat::Jpeg)
        .unwrap();
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn write_json(p: &Path, v: &Value) {
    std::fs::write(p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

/// Three images, laid out with the given folder / file names.
///
/// Image 1 `a.png` 6x4, panoptic ids (0 = void, 999 unlisted):
/// ```text
///   70000 70000   5   5 300 300
///   70000 70000   5   5 300 300
///     300   300   0   0 300 300
///     300   300 999 999   0   0
/// ```
/// 300 = wall (stuff, two disconnected pieces), 70000 = train, 5 = car (iscrowd), 4242 = listed
/// but absent. Image 2 `b.jpg` 8x8 greyscale JPEG, ids 12 | 13 left/right halves.
/// Image 3 `c.png` 6x4, ids 21 top half, 22 bottom half.
/// Categories are listed unsorted with ids 200 (wall), 7 (train), 3 (car).
fn write_fixture(images: &Path, panoptic: &Path, pj: &Path, cj: &Path) {
    for d in [images, panoptic, pj.parent().unwrap(), cj.parent().unwrap()] {
        std::fs::create_dir_all(d).unwrap();
    }
    write_rgb(&images.join("a.png"), 6, 4);
    #[rustfmt::skip]
    let a = [
        70000, 70000, 5, 5, 300, 300,
        70000, 70000, 5, 5, 300, 300,
        300, 300, 0, 0, 300, 300,
        300, 300, 999, 999, 0, 0,
    ];
    write_ids(&panoptic.join("a.png"), 6, 4, &a);
    write_grey_jpeg(&images.join("b.jpg"), 8, 8);
    let b: Vec<u32> = (0..64).map(|i| if i % 8 < 4 { 12 } else { 13 }).collect();
    write_ids(&panoptic.join("b.png"), 8, 8, &b);
    write_rgb(&images.join("c.png"), 6, 4);
    let c: Vec<u32> = (0..24).map(|i| if i < 12 { 21 } else { 22 }).collect();
    write_ids(&panoptic.join("c.png"), 6, 4, &c);
    let pan = json!({
        "info": {"description": "fixture"},
        "images": [
            {"id": 3, "file_name": "c.png", "width": 6, "height": 4},
            {"id": 1, "file_name": "a.png", "width": 6, "height": 4, "license": 1},
            {"id": 2, "file_name": "b.jpg", "width": 8, "height": 8},
        ],
        "annotations": [
            {"image_id": 1, "file_name": "a.png", "segments_info": [
                {"id": 300, "category_id": 200, "iscrowd": 0, "bbox": [0, 0, 6, 4], "area": 10},
                {"id": 70000, "category_id": 7, "iscrowd": 0, "bbox": [0, 0, 2, 2], "area": 4},
                {"id": 4242, "category_id": 3, "iscrowd": 0, "bbox": [0, 0, 1, 1], "area": 1},
                {"id": 5, "category_id": 3, "iscrowd": 1, "bbox": [2, 0, 2, 2], "area": 4},
            ]},
            {"image_id": 2, "file_name": "b.png", "segments_info": [
                {"id": 12, "category_id": 3, "iscrowd": 0, "bbox": [0, 0, 4, 8], "area": 32},
                {"id": 13, "category_id": 200, "iscrowd": 0, "bbox": [4, 0, 4, 8], "area": 32},
            ]},
            {"image_id": 3, "file_name": "c.png", "segments_info": [
                {"id": 21, "category_id": 200, "iscrowd": 0, "bbox": [0, 0, 6, 2], "area": 12},
                {"id": 22, "category_id": 7, "iscrowd": 0, "bbox": [0, 2, 6, 2], "area": 12},
            ]},
        ],
        "categories": [
            {"id": 200, "name": "wall", "isthing": 0, "supercategory": "building"},
            {"id": 7, "name": "train", "isthing": 1, "supercategory": "vehicle"},
            {"id": 3, "name": "car", "isthing": 1, "supercategory": "vehicle"},
        ],
    });
    write_json(pj, &pan);
    let caps = json!({
        "annotations": [
            {"id": 1, "image_id": 1, "caption": "  A train next to a car. "},
            {"id": 2, "image_id": 2, "caption": "A grey picture."},
            {"id": 3, "image_id": 1, "caption": "A wall behind a train."},
            {"id": 4, "image_id": 99, "caption": "Orphan caption."},
            {"id": 5, "image_id": 3, "caption": "A train below a wall."},
        ],
    });
    write_json(cj, &caps);
}

fn standard(name: &str) -> (PathBuf, SplitPaths) {
    let root = tmp(name);
    let p = SplitPaths::standard(&root, "val");
    write_fixture(&p.images, &p.panoptic, &p.panoptic_json, &p.captions_json);
    (root, p)
}

fn open(p: &SplitPaths) -> Result<Dataset, DataError> {
    Dataset::open(p, &LoadOptions::default())
}

fn skip(p: &SplitPaths, verify: bool) -> Dataset {
    Dataset::open(
        p,
        &LoadOptions {
            skip_bad: true,
            verify,
            ..Default::default()
        },
    )
    .unwrap()
}

fn edit(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut v = read_json(path);
    f(&mut v);
    write_json(path, &v);
}

/// Path of image 3's entry in annotations (JSON order: image 1, 2, 3).
fn ann3(v: &mut Value) -> &mut Value {
    &mut v["annotations"][2]
}

#[test]
fn messy_rules_on_good_fixture() {
    let (_root, p) = standard("good");
    let ds = open(&p).unwrap();
    // Ordered by image id; non-contiguous category ids mapped in ascending id order.
    assert_eq!(ds.len(), 3);
    assert_eq!(
        (0..3).map(|i| ds.image_id(i).unwrap()).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let cats: Vec<(u64, &str, bool)> = ds
        .categories()
        .iter()
        .map(|c| (c.id, c.name.as_str(), c.is_thing))
        .collect();
    assert_eq!(
        cats,
        vec![(3, "car", true), (7, "train", true), (200, "wall", false)]
    );
    let st = ds.stats();
    assert_eq!(
        (
            st.images_listed,
            st.samples,
            st.captions,
            st.orphan_captions,
            st.crowd_segments
        ),
        (3, 3, 4, 1, 1)
    );
    assert_eq!(st.decoded, 0, "open must not decode pixels");
    assert_eq!(
        ds.captions(0).unwrap(),
        ["A train next to a car.", "A wall behind a train."]
    );

    let s = ds.get(0).unwrap();
    // Listed-but-absent 4242 dropped; others in segments_info order with their contiguous category.
    let segs: Vec<(u32, usize, bool, u64)> = s
        .segments
        .segments
        .iter()
        .map(|g| (g.id, g.category, g.iscrowd, g.area))
        .collect();
    assert_eq!(
        segs,
        vec![(300, 2, false, 10), (70000, 1, false, 4), (5, 0, true, 4)]
    );
    // Crowd kept as an ordinary segment; non-contiguous ids decoded from R + 256 G + 256² B;
    // wall in two pieces = one segment; unlisted 999 and 0 are void.
    #[rustfmt::skip]
    assert_eq!(s.segments.index, vec![
        1, 1, 2, 2, 0, 0,
        1, 1, 2, 2, 0, 0,
        0, 0, -1, -1, 0, 0,
        0, 0, -1, -1, -1, -1,
    ]);
    assert_eq!((s.unlisted_ids.clone(), s.unlisted_pixels), (vec![999], 2));
    ds.get(0).unwrap(); // decoding again does not double-count
    let st = ds.stats();
    assert_eq!(
        (
            st.decoded,
            st.unlisted_ids,
            st.unlisted_pixels,
            st.listed_absent
        ),
        (1, 1, 2, 1)
    );
    // One node for the two-piece wall.
    let g = graph_from_sample(
        &s,
        ds.num_categories(),
        &GraphConfig::default(),
        &FeatureConfig { out_h: 4, out_w: 6 },
    )
    .unwrap();
    assert_eq!(g.segment_ids, vec![300, 5, 70000, 0]); // area ties: smaller id first
    assert_eq!(g.category, vec![2, 0, 1, 3]);

    // Greyscale JPEG → RGB with R = G = B.
    let s = ds.get(1).unwrap();
    assert_eq!(s.image.dimensions(), (8, 8));
    assert!(s.image.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
    assert!(
        s.image.pixels().any(|p| p[0] > 100),
        "image content survived"
    );
    assert_eq!(s.segments.segments.len(), 2);

    // Crowd policy Drop: the crowd segment's pixels become void, it is not a segment any more.
    let ds = Dataset::open(
        &p,
        &LoadOptions {
            crowd: CrowdPolicy::Drop,
            ..Default::default()
        },
    )
    .unwrap();
    let s = ds.get(0).unwrap();
    assert_eq!(
        s.segments.segments.iter().map(|g| g.id).collect::<Vec<_>>(),
        vec![300, 70000]
    );
    assert_eq!(&s.segments.index[0..6], &[1, 1, -1, -1, 0, 0]);
    assert_eq!(
        ds.stats().listed_absent,
        1,
        "dropped crowd is not counted as absent"
    );

    // verify decodes everything at open and fills the counters.
    let ds = Dataset::open(
        &p,
        &LoadOptions {
            verify: true,
            ..Default::default()
        },
    )
    .unwrap();
    let st = ds.stats();
    assert_eq!(
        (st.decoded, st.unlisted_pixels, st.listed_absent),
        (3, 2, 1)
    );
    assert!(ds.get(3).is_err(), "out of range index is an error");
}

#[test]
fn coco_names_and_toml_config() {
    let root = tmp("coco-names");
    let p = SplitPaths::coco2017(&root, "val");
    assert_eq!(p.images, root.join("val2017"));
    assert_eq!(p.panoptic, root.join("panoptic_val2017"));
    assert_eq!(
        p.panoptic_json,
        root.join("annotations/panoptic_val2017.json")
    );
    assert_eq!(
        p.captions_json,
        root.join("annotations/captions_val2017.json")
    );
    write_fixture(&p.images, &p.panoptic, &p.panoptic_json, &p.captions_json);
    assert_eq!(open(&p).unwrap().len(), 3);
    let toml_text = r#"
        images = "val2017"
        panoptic = "panoptic_val2017"
        panoptic_json = "annotations/panoptic_val2017.json"
        captions_json = "annotations/captions_val2017.json"
    "#;
    let from_toml: SplitPaths = toml::from_str(toml_text).unwrap();
    assert_eq!(from_toml.resolved(&root), p);
    let o: SplitPathsOverride = toml::from_str(toml_text).unwrap();
    assert_eq!(
        SplitPaths::standard(&root, "val").with_overrides(&o, &root),
        p
    );
    assert!(toml::from_str::<SplitPaths>("images = \"x\"\nbogus = 1").is_err());
}

fn assert_err(e: DataError, needles: &[&str]) {
    let m = e.to_string();
    for n in needles {
        assert!(m.contains(n), "error {m:?} should mention {n:?}");
    }
}

#[test]
fn missing_files_and_folders() {
    let (_r, p) = standard("missing");
    std::fs::remove_file(p.images.join("c.png")).unwrap();
    assert_err(open(&p).unwrap_err(), &["c.png", "missing image"]);
    let ds = skip(&p, false);
    assert_eq!(ds.len(), 2);
    let st = ds.stats();
    assert_eq!(st.skipped.len(), 1);
    assert_eq!(st.skipped[0].image_id, 3);
    assert!(
        st.skipped[0].reason.contains("c.png"),
        "{}",
        st.skipped[0].reason
    );

    std::fs::remove_file(p.panoptic.join("b.png")).unwrap();
    assert_err(open(&p).unwrap_err(), &["b.png", "missing panoptic PNG"]);
    assert_eq!(skip(&p, false).len(), 1);

    std::fs::remove_file(&p.captions_json).unwrap();
    assert_err(open(&p).unwrap_err(), &["captions.json", "missing"]);
    let mut q = p.clone();
    q.images = p.images.join("nope");
    write_fixture(&p.images, &p.panoptic, &p.panoptic_json, &p.captions_json);
    assert_err(open(&q).unwrap_err(), &["nope", "missing images folder"]);
}

#[test]
fn corrupt_png_json_and_truncated_pixels() {
    let (_r, p) = standard("corrupt");
    std::fs::write(p.panoptic.join("c.png"), b"definitely not a png").unwrap();
    assert_err(open(&p).unwrap_err(), &["c.png", "cannot decode"]);
    assert_eq!(skip(&p, false).len(), 2);

    // A PNG whose header is fine but whose data is cut: found by get(), or up front with verify.
    let (_r, p) = standard("truncated");
    let f = p.panoptic.join("c.png");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 20]).unwrap();
    let ds = open(&p).unwrap();
    assert_err(ds.get(2).unwrap_err(), &["c.png"]);
    assert!(Dataset::open(
        &p,
        &LoadOptions {
            verify: true,
            ..Default::default()
        }
    )
    .is_err());
    let ds = skip(&p, true);
    assert_eq!(ds.len(), 2);
    assert!(ds.stats().skipped[0].reason.contains("c.png"));

    let (_r, p) = standard("badjson");
    std::fs::write(&p.panoptic_json, b"{\"images\": [").unwrap();
    assert_err(open(&p).unwrap_err(), &["panoptic.json", "invalid JSON"]);
    assert!(
        Dataset::open(
            &p,
            &LoadOptions {
                skip_bad: true,
                ..Default::default()
            }
        )
        .is_err(),
        "a broken index file cannot be skipped"
    );
    let (_r, p) = standard("badjson2");
    edit(&p.captions_json, |v| {
        v["annotations"][0]["caption"] = json!(17)
    });
    assert_err(open(&p).unwrap_err(), &["captions.json", "invalid JSON"]);
}

#[test]
fn unknown_category_bad_ids_and_no_captions() {
    let (_r, p) = standard("unknown-cat");
    edit(&p.panoptic_json, |v| {
        ann3(v)["segments_info"][1]["category_id"] = json!(55)
    });
    assert_err(
        open(&p).unwrap_err(),
        &["panoptic.json", "image 3", "segment 22", "category_id 55"],
    );
    let ds = skip(&p, false);
    assert_eq!(ds.len(), 2);
    assert!(ds.stats().skipped[0].reason.contains("category_id 55"));

    let (_r, p) = standard("dup-seg");
    edit(&p.panoptic_json, |v| {
        ann3(v)["segments_info"][1]["id"] = json!(21)
    });
    assert_err(
        open(&p).unwrap_err(),
        &["panoptic.json", "segment id 21 is listed twice"],
    );
    edit(&p.panoptic_json, |v| {
        ann3(v)["segments_info"][1]["id"] = json!(0)
    });
    assert_err(open(&p).unwrap_err(), &["panoptic.json", "segment id 0"]);

    let (_r, p) = standard("dup-cat");
    edit(&p.panoptic_json, |v| v["categories"][0]["id"] = json!(7));
    assert_err(open(&p).unwrap_err(), &["category id 7 is listed twice"]);

    // A file name must stay inside the split's folders (issue 19: no /etc/passwd, no ..).
    for name in ["/etc/passwd", "../../x.png", ""] {
        let (_r, p) = standard("escape");
        edit(&p.panoptic_json, |v| {
            v["images"][0]["file_name"] = json!(name)
        });
        assert_err(
            open(&p).unwrap_err(),
            &[
                "panoptic.json",
                "is not a relative name inside the split's folders",
            ],
        );
        let (_r, p) = standard("escape-ann");
        edit(&p.panoptic_json, |v| ann3(v)["file_name"] = json!(name));
        assert_err(open(&p).unwrap_err(), &["is not a relative name"]);
    }

    let (_r, p) = standard("no-caption");
    edit(&p.captions_json, |v| {
        let a = v["annotations"].as_array_mut().unwrap();
        a.retain(|c| c["image_id"] != json!(3));
    });
    assert_err(
        open(&p).unwrap_err(),
        &["captions.json", "image 3 (c.png) has no caption"],
    );
    assert_eq!(skip(&p, false).len(), 2);

    let (_r, p) = standard("no-annotation");
    edit(&p.panoptic_json, |v| {
        v["annotations"].as_array_mut().unwrap().pop();
    });
    assert_err(
        open(&p).unwrap_err(),
        &[
            "panoptic.json",
            "image 3 (c.png) has no panoptic annotation",
        ],
    );
}

#[test]
fn zero_segments() {
    let (_r, p) = standard("zero-listed");
    edit(&p.panoptic_json, |v| ann3(v)["segments_info"] = json!([]));
    assert_err(
        open(&p).unwrap_err(),
        &[
            "panoptic.json",
            "image 3 has no segment",
            "segments_info is empty",
        ],
    );
    assert_eq!(skip(&p, false).len(), 2);

    // Listed segments, but the PNG is all void / unlisted: caught when decoding.
    let (_r, p) = standard("zero-pixels");
    let ids: Vec<u32> = (0..24).map(|i| if i < 12 { 0 } else { 777 }).collect();
    write_ids(&p.panoptic.join("c.png"), 6, 4, &ids);
    let ds = open(&p).unwrap();
    assert_err(
        ds.get(2).unwrap_err(),
        &["c.png", "no listed segment id occurs in the PNG"],
    );
    let ds = skip(&p, true);
    assert_eq!(ds.len(), 2);
    assert!(ds.stats().skipped[0].reason.contains("no segment"));
}

#[test]
fn size_mismatch_names_both_files_and_sizes() {
    let (_r, p) = standard("size");
    write_ids(&p.panoptic.join("c.png"), 5, 5, &[21; 25]);
    let e = open(&p).unwrap_err();
    assert!(matches!(e, DataError::SizeMismatch { .. }));
    assert_err(e, &["images/c.png", "6x4", "panoptic/c.png", "5x5"]);
    assert_eq!(skip(&p, false).len(), 2);

    let (_r, p) = standard("size-record");
    edit(&p.panoptic_json, |v| v["images"][0]["width"] = json!(7));
    assert_err(
        open(&p).unwrap_err(),
        &["panoptic.json", "image 3", "7x4", "6x4"],
    );
}

fn write_features(path: &Path, c: usize, h: usize, w: usize, v: f32) {
    let data: Vec<f32> = vec![v; c * h * w];
    let t = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![c, h, w],
        bytemuck::cast_slice(&data),
    )
    .unwrap();
    std::fs::write(
        path,
        safetensors::serialize([("features", t)], None).unwrap(),
    )
    .unwrap();
}

#[test]
fn external_features_and_their_errors() {
    let (root, p) = standard("features");
    let fdir = root.join("val").join("features");
    std::fs::create_dir_all(&fdir).unwrap();
    for stem in ["a", "b", "c"] {
        write_features(&fdir.join(format!("{stem}.safetensors")), 5, 2, 3, 0.5);
    }
    let p2 = SplitPaths::standard(&root, "val");
    assert_eq!(
        p2.features.as_deref(),
        Some(fdir.as_path()),
        "standard() picks up features/"
    );
    let ds = open(&p2).unwrap();
    let s = ds.get(1).unwrap();
    let f = s.features.as_ref().unwrap();
    assert_eq!((f.c, f.h, f.w), (5, 2, 3));
    let g = graph_from_sample(
        &s,
        ds.num_categories(),
        &GraphConfig::default(),
        &FeatureConfig::default(),
    )
    .unwrap();
    assert_eq!((g.feat_dim, g.feat_h, g.feat_w), (5, 2, 3));
    assert!(open(&p).unwrap().get(1).unwrap().features.is_none());

    std::fs::write(fdir.join("c.safetensors"), b"garbage").unwrap();
    let ds = open(&p2).unwrap();
    assert_err(ds.get(2).unwrap_err(), &["c.safetensors", "corrupt"]);
    assert_eq!(skip(&p2, true).len(), 2);
    write_features(&fdir.join("c.safetensors"), 5, 2, 3, f32::INFINITY);
    assert_err(
        open(&p2).unwrap().get(2).unwrap_err(),
        &["c.safetensors", "non-finite"],
    );
    std::fs::remove_file(fdir.join("b.safetensors")).unwrap();
    assert_err(
        open(&p2).unwrap_err(),
        &["b.safetensors", "missing feature file"],
    );
}

#[test]
fn dataset_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Dataset>();
    let (_r, p) = standard("threads");
    let ds = open(&p).unwrap();
    let n: usize = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|i| {
                s.spawn({
                    let ds = &ds;
                    move || ds.get(i).unwrap().segments.segments.len()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(n, 3 + 2 + 2);
    assert_eq!(ds.stats().decoded, 3);
}

#[test]
fn panoptic_png_must_be_8bit_rgb() {
    let (_r, p) = standard("grey-panoptic");
    let img: ImageBuffer<Luma<u8>, Vec<u8>> = ImageBuffer::from_pixel(6, 4, Luma([21u8]));
    img.save(p.panoptic.join("c.png")).unwrap();
    let ds = open(&p).unwrap();
    assert_err(
        ds.get(2).unwrap_err(),
        &["c.png", "must be 8-bit RGB", "L8"],
    );
    // RGBA is accepted (alpha ignored).
    let rgba = image::RgbaImage::from_fn(6, 4, |_, y| {
        image::Rgba([if y < 2 { 21 } else { 22 }, 0, 0, 255])
    });
    rgba.save(p.panoptic.join("c.png")).unwrap();
    assert_eq!(open(&p).unwrap().get(2).unwrap().segments.segments.len(), 2);
}

#[test]
fn endless_json_and_huge_images_are_refused_before_they_cost_memory() {
    // captions.json that never ends (a link to /dev/zero): refused at the limit, at once.
    #[cfg(unix)]
    {
        let (d, p) = standard("endless");
        std::fs::remove_file(&p.captions_json).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &p.captions_json).unwrap();
        let t = std::time::Instant::now();
        let e = Dataset::open(
            &p,
            &LoadOptions {
                max_file_bytes: Some(1 << 20),
                ..Default::default()
            },
        )
        .map(|_| ())
        .unwrap_err();
        assert_err(e, &["captions.json", "invalid JSON"]);
        assert!(t.elapsed().as_secs() < 5);
        std::fs::remove_dir_all(d).ok();
    }
    // A JSON file above the limit is refused from its size, naming the limit and the key.
    let (d, p) = standard("large");
    let e = Dataset::open(
        &p,
        &LoadOptions {
            max_file_bytes: Some(64),
            ..Default::default()
        },
    )
    .map(|_| ())
    .unwrap_err();
    assert_err(
        e,
        &["panoptic", "limit of 64 bytes", "data.load.max_file_bytes"],
    );
    std::fs::remove_dir_all(d).ok();
    // An image above the pixel limit is refused from its header, naming the key.
    let (d, p) = standard("pixels");
    let e = Dataset::open(
        &p,
        &LoadOptions {
            max_image_pixels: Some(10),
            ..Default::default()
        },
    )
    .map(|_| ())
    .unwrap_err();
    assert_err(
        e,
        &[
            "pixels is above the limit of 10",
            "data.load.max_image_pixels",
        ],
    );
    std::fs::remove_dir_all(d).ok();
}
