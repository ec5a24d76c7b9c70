use maskddp::ddp_model;

#[ddp_model]
pub fn forward(x: f32) -> f32 {
    x
}

fn main() {}
