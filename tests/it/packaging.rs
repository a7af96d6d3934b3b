//! The packaged system files as the system reads them: a udev rule that uses a tty's USB properties
//! must be read after `60-serial.rules`, which imports them (udev reads rules files in the order of
//! their names, across its directories).

use std::path::Path;

/// The rules file of systemd-udev that imports a tty's USB properties (`IMPORT{builtin}="usb_id"`).
const IMPORTER: &str = "60-serial.rules";

/// Properties that exist only once `60-serial.rules` imported them.
const IMPORTED: [&str; 5] = [
    "ID_SERIAL",
    "ID_VENDOR_ID",
    "ID_MODEL_ID",
    "ID_USB_INTERFACE_NUM",
    "ID_BUS",
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The udev rules files the package installs, by installed name, with their source.
fn packaged_rules() -> Vec<(String, String)> {
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(repo().join("Cargo.toml")).unwrap()).unwrap();
    let assets = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .unwrap();
    assets
        .iter()
        .filter_map(|a| {
            let (src, dest) = (a[0].as_str()?, a[1].as_str()?);
            dest.trim_end_matches('/')
                .ends_with("udev/rules.d")
                .then(|| {
                    let name = Path::new(src).file_name().unwrap().to_string_lossy();
                    (name.into_owned(), src.to_owned())
                })
        })
        .collect()
}

#[test]
fn udev_rules_that_use_usb_properties_are_read_after_60_serial() {
    let rules = packaged_rules();
    assert!(!rules.is_empty(), "the package installs no udev rule");
    for (name, src) in &rules {
        let text = std::fs::read_to_string(repo().join(src)).unwrap();
        let uses: Vec<&str> = IMPORTED
            .iter()
            .copied()
            .filter(|p| text.contains(&format!("ENV{{{p}")) || text.contains(&format!("$env{{{p}")))
            .collect();
        if uses.is_empty() {
            continue;
        }
        // udev orders rules files by name, byte by byte.
        assert!(
            name.as_bytes() > IMPORTER.as_bytes(),
            "{name} uses {uses:?} but sorts before {IMPORTER}, which imports them: rename it (e.g. 61-…)"
        );
    }
    // Every rules file in systemd/ is the packaged one (no stale copy under another name).
    for entry in std::fs::read_dir(repo().join("systemd")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".rules") {
            assert!(
                rules.iter().any(|(n, _)| *n == name),
                "systemd/{name} is not installed by the package"
            );
        }
    }
    // Where systemd-udev is installed, the importer is where this test assumes.
    let installed = Path::new("/lib/udev/rules.d").join(IMPORTER);
    if let Ok(text) = std::fs::read_to_string(&installed) {
        assert!(
            text.contains("IMPORT{builtin}=\"usb_id\""),
            "{} no longer imports usb_id",
            installed.display()
        );
    }
}
