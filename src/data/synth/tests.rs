//! Scenes, captions, hard negatives and written files of the synthetic generator.

use super::grammar::*;
use super::write::*;
use crate::data::batch::{collate, BatchCapacity};
use crate::data::coco::{Dataset, LoadOptions, SplitPaths};
use crate::data::features::FeatureConfig;
use crate::data::graph::{graph_from_sample, GraphConfig};
use crate::data::rng::SynthRng;

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gshn-synth-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn pos(o: &SynthObject) -> (i32, i32, i32, i32) {
    (o.row, o.col, o.cx, o.cy)
}

#[test]
fn hard_negatives_differ_in_exactly_one_thing() {
    let scenes = generate_scenes(300, &mut SynthRng::new(11));
    assert_eq!(scenes.len(), 300);
    let (mut swaps, mut attrs) = (0, 0);
    for s in &scenes {
        assert!(
            unique_desc(&s.objects),
            "image {}: ambiguous descriptions",
            s.image_id
        );
        assert!((2..=4).contains(&s.objects.len()));
        assert!((3..=5).contains(&s.captions.len()));
        let base = scenes
            .iter()
            .find(|b| b.group == s.group && b.variant == "base")
            .unwrap();
        assert_eq!(
            (s.horizon, s.texture_seed),
            (base.horizon, base.texture_seed)
        );
        assert_eq!(s.objects.len(), base.objects.len());
        let pairs: Vec<_> = s.objects.iter().zip(&base.objects).collect();
        match s.variant.as_str() {
            "base" => {}
            "swap" => {
                swaps += 1;
                // Attributes all equal; exactly two objects moved, onto each other's place.
                assert!(pairs.iter().all(|(a, b)| a.describe() == b.describe()));
                let moved: Vec<usize> = (0..pairs.len())
                    .filter(|&i| pos(pairs[i].0) != pos(pairs[i].1))
                    .collect();
                assert_eq!(moved.len(), 2, "image {}", s.image_id);
                let (i, j) = (moved[0], moved[1]);
                assert_eq!(pos(&s.objects[i]), pos(&base.objects[j]));
                assert_eq!(pos(&s.objects[j]), pos(&base.objects[i]));
                // The relation between them flipped, and the first caption is about that pair.
                let flip = |r: Relation| match r {
                    Relation::LeftOf => Relation::RightOf,
                    Relation::RightOf => Relation::LeftOf,
                    Relation::Above => Relation::Below,
                    Relation::Below => Relation::Above,
                };
                let now = relations(&s.objects[i], &s.objects[j]);
                let was: Vec<Relation> = relations(&base.objects[i], &base.objects[j])
                    .into_iter()
                    .map(flip)
                    .collect();
                assert_eq!(now, was);
                assert!(
                    s.captions[0].contains(&s.objects[i].describe())
                        && s.captions[0].contains(&s.objects[j].describe())
                );
            }
            "attribute" => {
                attrs += 1;
                assert!(pairs
                    .iter()
                    .all(|(a, b)| pos(a) == pos(b) && a.segment_id == b.segment_id));
                let changed: Vec<_> = pairs.iter().filter(|(a, b)| a != b).collect();
                assert_eq!(changed.len(), 1, "image {}", s.image_id);
                let (a, b) = changed[0];
                let diffs = [a.kind != b.kind, a.color != b.color, a.size != b.size];
                assert_eq!(
                    diffs.iter().filter(|&&d| d).count(),
                    1,
                    "image {}: {}",
                    s.image_id,
                    s.change
                );
                assert!(s.captions[0].contains(&a.describe()));
            }
            v => panic!("unknown variant {v}"),
        }
    }
    assert_eq!((swaps, attrs), (100, 100));
}

#[test]
fn captions_state_attributes_and_true_relations() {
    let scenes = generate_scenes(150, &mut SynthRng::new(4));
    let mut seen = std::collections::HashSet::new();
    for s in &scenes {
        for c in &s.captions {
            let rels: Vec<Relation> = [
                Relation::LeftOf,
                Relation::RightOf,
                Relation::Above,
                Relation::Below,
            ]
            .into_iter()
            .filter(|r| c.contains(r.phrase()))
            .collect();
            assert_eq!(rels.len(), 1, "{c:?}");
            let r = rels[0];
            seen.insert(r);
            let at = c.find(r.phrase()).unwrap();
            let (before, after) = (&c[..at], &c[at + r.phrase().len()..]);
            let find = |t: &str| -> Vec<usize> {
                (0..s.objects.len())
                    .filter(|&i| t.contains(&s.objects[i].describe()))
                    .collect()
            };
            let (a, b) = (find(before), find(after));
            assert_eq!((a.len(), b.len()), (1, 1), "{c:?}");
            assert!(
                relations(&s.objects[a[0]], &s.objects[b[0]]).contains(&r),
                "false caption {c:?} for {:?}",
                s.objects
            );
        }
    }
    assert_eq!(seen.len(), 4, "all four relations are used");
    // Every caption has a hard negative: the same words, false for its scene.
    let words = |c: &str| {
        let mut w: Vec<String> = c.split_whitespace().map(str::to_string).collect();
        w.sort();
        w
    };
    for s in &scenes {
        for c in &s.captions {
            let n = exchange_objects(c).unwrap_or_else(|| panic!("no negative for {c:?}"));
            assert_ne!(&n, c);
            assert_eq!(words(&n), words(c));
            let holds = |o: &SynthObject, p: &SynthObject| {
                let r = [
                    Relation::LeftOf,
                    Relation::RightOf,
                    Relation::Above,
                    Relation::Below,
                ]
                .into_iter()
                .find(|r| n.contains(r.phrase()))
                .unwrap();
                let at = n.find(r.phrase()).unwrap();
                n[..at].contains(&o.describe())
                    && n[at..].contains(&p.describe())
                    && relations(o, p).contains(&r)
            };
            let any = s
                .objects
                .iter()
                .any(|o| s.objects.iter().any(|p| holds(o, p)));
            assert!(!any, "negative {n:?} is true for {:?}", s.objects);
        }
    }
    assert_eq!(exchange_objects("two dogs on a sofa"), None);
    assert_eq!(
        exchange_objects("the small red circle is above the large blue square").as_deref(),
        Some("the large blue square is above the small red circle")
    );
    let dup = scenes
        .iter()
        .filter(|s| (1..s.captions.len()).any(|i| s.captions[..i].contains(&s.captions[i])))
        .count();
    assert!(dup <= scenes.len() / 20, "{dup} scenes repeat a caption");
}

#[test]
fn same_seed_same_bytes_and_reader_roundtrip() {
    let (d1, d2, d3) = (tmp("a"), tmp("b"), tmp("c"));
    let st = write_synthetic(&d1, 10, 5, 7).unwrap();
    assert_eq!((st.train_images, st.val_images, st.groups), (10, 5, 4 + 2));
    write_synthetic(&d2, 10, 5, 7).unwrap();
    write_synthetic(&d3, 10, 5, 8).unwrap();
    let mut files = 0;
    for split in ["train", "val"] {
        for sub in ["images", "panoptic"] {
            for e in std::fs::read_dir(d1.join(split).join(sub)).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(&d1).unwrap();
                assert_eq!(
                    std::fs::read(&p).unwrap(),
                    std::fs::read(d2.join(rel)).unwrap(),
                    "{rel:?}"
                );
                files += 1;
            }
        }
        for f in ["panoptic.json", "captions.json", "scenes.json"] {
            let a = std::fs::read(d1.join(split).join(f)).unwrap();
            assert_eq!(
                a,
                std::fs::read(d2.join(split).join(f)).unwrap(),
                "{split}/{f}"
            );
            assert_ne!(
                a,
                std::fs::read(d3.join(split).join(f)).unwrap(),
                "seed change must change {f}"
            );
        }
    }
    assert_eq!(files, 30);

    // Read back through the COCO reader.
    let ds = Dataset::open(
        &SplitPaths::standard(&d1, "train"),
        &LoadOptions {
            verify: true,
            ..Default::default()
        },
    )
    .unwrap();
    let scenes = read_scenes(&d1.join("train")).unwrap();
    assert_eq!(ds.len(), 10);
    let ids: Vec<u64> = ds.categories().iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 101, 102, 103]);
    assert_eq!(ds.stats().unlisted_ids, 0);
    let mut graphs = Vec::new();
    for (i, sc) in scenes.iter().enumerate() {
        let s = ds.get(i).unwrap();
        assert_eq!(s.image_id, sc.image_id);
        assert_eq!(s.captions, sc.captions);
        let nstuff = if sc.horizon.is_some() { 2 } else { 1 };
        assert_eq!(s.segments.segments.len(), sc.objects.len() + nstuff);
        for o in &sc.objects {
            let k = s.segments.index[(o.cy * 64 + o.cx) as usize];
            let seg = &s.segments.segments[k as usize];
            assert_eq!(seg.id, o.segment_id);
            assert_eq!(ds.categories()[seg.category].name, o.kind);
            assert!(seg.is_thing);
            let px = s.image.get_pixel(o.cx as u32, o.cy as u32).0;
            let want = o.rgb();
            assert!(
                (0..3).all(|c| (px[c] as i32 - want[c] as i32).abs() <= 4),
                "{px:?} vs {want:?}"
            );
        }
        let g = graph_from_sample(
            &s,
            ds.num_categories(),
            &GraphConfig::default(),
            &FeatureConfig::default(),
        )
        .unwrap();
        assert_eq!(g.num_nodes, sc.objects.len() + nstuff + 1);
        crate::data::graph::tests::check_invariants(&g, 3);
        graphs.push(g);
    }
    let cap = BatchCapacity::for_config(16, &GraphConfig::default(), 256);
    collate(&graphs, &cap).unwrap().validate().unwrap();
    for d in [d1, d2, d3] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[cfg(test)]
mod speed {
    /// `cargo test --release --lib synth_full_size -- --ignored --nocapture`: the 3000 + 300 default.
    #[test]
    #[ignore]
    fn synth_full_size() {
        let d = std::env::temp_dir().join(format!("gshn-synth-full-{}", std::process::id()));
        let t = std::time::Instant::now();
        let s = super::super::write::write_synthetic(&d, 3000, 300, 1).unwrap();
        println!("{s:?} in {:.2?} -> {}", t.elapsed(), d.display());
    }
}

#[test]
fn a_rewrite_replaces_the_old_dataset_and_never_touches_foreign_files() {
    let d = tmp("rewrite");
    write_synthetic(&d, 12, 4, 1).unwrap();
    write_synthetic(&d, 2, 2, 1).unwrap();
    let images = std::fs::read_dir(d.join("train").join("images"))
        .unwrap()
        .count();
    assert_eq!(images, 2, "images of the earlier dataset stayed behind");
    let foreign = tmp("foreign");
    std::fs::create_dir_all(foreign.join("train")).unwrap();
    std::fs::write(foreign.join("train").join("mine.txt"), b"keep").unwrap();
    let e = write_synthetic(&foreign, 2, 2, 1).unwrap_err().to_string();
    assert!(e.contains("not a gshn synthetic dataset"), "{e}");
    assert_eq!(
        std::fs::read(foreign.join("train").join("mine.txt")).unwrap(),
        b"keep"
    );
    std::fs::remove_dir_all(d).ok();
    std::fs::remove_dir_all(foreign).ok();
}

#[test]
fn counts_past_the_cap_are_refused_before_anything_is_written() {
    let out = tmp("cap");
    let e = write_synthetic(&out, 1_000_000_000, 2, 0).unwrap_err();
    assert!(e.to_string().contains("--train 1000000000 exceeds"), "{e}");
    assert!(!out.exists());
}
