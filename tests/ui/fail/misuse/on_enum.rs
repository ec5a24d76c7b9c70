use maskddp::ddp_model;

#[ddp_model]
pub enum Route {
    Left,
    Right,
}

fn main() {}
