// Unit-test wrapper: bnnc_axis_in with in_data = {tlast, tdata}, out_data = {frame_error, pixel}.
module tb_axis_in #(
    parameter int EB = 8,
    parameter int C = 3,
    parameter int BE = 2,
    parameter int PIXELS = 2,
    parameter int TW = 16
) (
    input  logic            clk,
    input  logic            rst_n,
    input  logic            in_valid,
    output logic            in_ready,
    input  logic [    TW:0] in_data,
    output logic            out_valid,
    input  logic            out_ready,
    output logic [  C*EB:0] out_data
);
  logic frame_error;
  bnnc_axis_in #(.EB(EB), .C(C), .BE(BE), .PIXELS(PIXELS), .TW(TW)) dut (
      .clk(clk), .rst_n(rst_n),
      .s_axis_tvalid(in_valid), .s_axis_tready(in_ready), .s_axis_tdata(in_data[TW-1:0]),
      .s_axis_tlast(in_data[TW]),
      .out_valid(out_valid), .out_ready(out_ready), .out_data(out_data[C*EB-1:0]),
      .frame_error(frame_error)
  );
  assign out_data[C*EB] = frame_error;
endmodule
