//! gshn's core as a dependency (`default-features = false`), built and run by CI: the crate's
//! own examples, compiled here against the core alone.

#[path = "../../../examples/fused_ops.rs"]
mod fused_ops;
#[path = "../../../examples/train_tiny.rs"]
mod train_tiny;

fn main() -> gshn::Result<()> {
    fused_ops::main()?;
    train_tiny::main()?;
    println!("dependent: ok");
    Ok(())
}
